//! Cluster transport over real QUIC on loopback: every test binds 127.0.0.1:0 and awaits results.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use ironhub_raft::transport::certs::generate_cluster_certs;
use ironhub_raft::transport::frame::{
    Hello, RequestHeader, ResponseHeader, Status, HELLO_FIXED_LEN, RESPONSE_HEADER_LEN,
};
use ironhub_raft::transport::{
    ClusterIdCell, NodeId, RpcHandler, RpcKind, Security, Transport, TransportConfig, TransportError, ALPN,
    CLUSTER_SERVER_NAME, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_FRAME,
};
use uuid::Uuid;

const T: Duration = Duration::from_secs(5);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Echoes `"{from}/{group}/{kind:?}:" + body`; body "fail" returns an error, "hang" never
/// answers; snapshots are kept
/// and answered with their path.
#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
    snapshots: Mutex<Vec<(NodeId, u16, Bytes, PathBuf)>>,
}

impl RpcHandler for Echo {
    fn handle(
        &self,
        from: NodeId,
        group: u16,
        kind: RpcKind,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if body.as_ref() == b"fail" {
                return Err(format!("handler refused {kind:?}"));
            }
            if body.as_ref() == b"hang" {
                futures::future::pending::<()>().await;
            }
            let mut out = format!("{from}/{group}/{kind:?}:").into_bytes();
            out.extend_from_slice(&body);
            Ok(Bytes::from(out))
        }
        .boxed()
    }

    fn handle_snapshot(
        &self,
        from: NodeId,
        group: u16,
        header: Bytes,
        file: PathBuf,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        let reply = Bytes::from(file.to_string_lossy().into_owned());
        if let Ok(mut s) = self.snapshots.lock() {
            s.push((from, group, header, file));
        }
        async move { Ok(reply) }.boxed()
    }
}

struct Node {
    t: Transport,
    cell: Arc<ClusterIdCell>,
    echo: Arc<Echo>,
    _dir: tempfile::TempDir,
}

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn node_with(
    id: NodeId,
    security: Security,
    cluster: Option<Uuid>,
    max_frame: usize,
) -> Result<Node, TransportError> {
    init();
    let dir = tempfile::tempdir().map_err(|e| TransportError::Config(e.to_string()))?;
    let cell = Arc::new(ClusterIdCell::new(cluster));
    let echo = Arc::new(Echo::default());
    let cfg = TransportConfig {
        node_id: id,
        bind: loopback(),
        peers: HashMap::new(),
        security,
        max_frame,
        snapshot_dir: dir.path().join("snapshots"),
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
    };
    let t = Transport::start(cfg, cell.clone(), echo.clone()).await?;
    Ok(Node { t, cell, echo, _dir: dir })
}

async fn node(id: NodeId, security: Security, cluster: Option<Uuid>) -> Result<Node, TransportError> {
    node_with(id, security, cluster, DEFAULT_MAX_FRAME).await
}

fn secret() -> Security {
    Security::Secret("correct horse battery staple".into())
}

fn link(a: &Node, a_id: NodeId, b: &Node, b_id: NodeId) {
    a.t.set_peer(b_id, b.t.local_addr());
    b.t.set_peer(a_id, a.t.local_addr());
}

async fn pair(security: Security) -> Result<(Node, Node), TransportError> {
    let id = Some(Uuid::new_v4());
    let a = node(1, security.clone(), id).await?;
    let b = node(2, security, id).await?;
    link(&a, 1, &b, 2);
    Ok((a, b))
}

const KINDS: [RpcKind; 7] = [
    RpcKind::Append,
    RpcKind::Vote,
    RpcKind::PreVote,
    RpcKind::TransferLeader,
    RpcKind::Forward,
    RpcKind::Read,
    RpcKind::Admin,
];

#[tokio::test]
async fn two_nodes_call_each_other_for_every_kind_and_group() -> TestResult {
    let (a, b) = pair(secret()).await?;
    for kind in KINDS {
        for group in [0u16, 1, 7, u16::MAX] {
            let body = Bytes::from(format!("hello {group}"));
            let got = a.t.call(2, group, kind, body.clone(), T).await?;
            assert_eq!(got, Bytes::from(format!("1/{group}/{kind:?}:hello {group}")));
            let got = b.t.call(1, group, kind, body, T).await?;
            assert_eq!(got, Bytes::from(format!("2/{group}/{kind:?}:hello {group}")));
        }
    }
    let empty = a.t.call(2, 3, RpcKind::Append, Bytes::new(), T).await?;
    assert_eq!(empty, Bytes::from_static(b"1/3/Append:"));
    a.t.shutdown().await;
    b.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn handler_error_reaches_the_caller_as_remote() -> TestResult {
    let (a, b) = pair(secret()).await?;
    let err = a.t.call(2, 0, RpcKind::Forward, Bytes::from_static(b"fail"), T).await;
    assert!(matches!(&err, Err(TransportError::Remote(m)) if m == "handler refused Forward"), "{err:?}");
    a.t.shutdown().await;
    b.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_thousand_concurrent_calls_are_all_answered() -> TestResult {
    let (a, b) = pair(secret()).await?;
    let calls = (0..1000u32).map(|i| {
        let t = a.t.clone();
        async move {
            let body = Bytes::from(i.to_be_bytes().to_vec());
            let reply = t.call(2, (i % 17) as u16, RpcKind::Append, body, Duration::from_secs(30)).await;
            (i, reply)
        }
    });
    let results = futures::future::join_all(calls).await;
    for (i, reply) in results {
        let reply = reply?;
        let mut want = format!("1/{}/Append:", i % 17).into_bytes();
        want.extend_from_slice(&i.to_be_bytes());
        assert_eq!(reply.as_ref(), want.as_slice(), "call {i}");
    }
    assert_eq!(b.echo.calls.load(Ordering::SeqCst), 1000);
    a.t.shutdown().await;
    b.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn oversized_frame_is_refused_by_the_receiver() -> TestResult {
    let id = Some(Uuid::new_v4());
    let a = node(1, secret(), id).await?;
    let b = node_with(2, secret(), id, 1024).await?;
    link(&a, 1, &b, 2);
    let big = Bytes::from(vec![7u8; 2 << 20]);
    let err = a.t.call(2, 0, RpcKind::Append, big, T).await;
    assert!(
        matches!(err, Err(TransportError::FrameTooLarge { len, max: 1024 }) if len == 2 << 20),
        "{err:?}"
    );
    assert_eq!(b.echo.calls.load(Ordering::SeqCst), 0);
    // The sender checks its own limit without touching the network.
    let err = b.t.call(1, 0, RpcKind::Append, Bytes::from(vec![0u8; 1025]), T).await;
    assert!(matches!(err, Err(TransportError::FrameTooLarge { len: 1025, max: 1024 })), "{err:?}");
    // Still usable afterwards.
    assert_eq!(
        a.t.call(2, 0, RpcKind::Vote, Bytes::from_static(b"x"), T).await?,
        Bytes::from_static(b"1/0/Vote:x")
    );
    a.t.shutdown().await;
    b.t.shutdown().await;
    Ok(())
}

/// A raw QUIC client (certificate mode) sends a header announcing a 4 GiB body and never sends
/// it: the reply must come from the header alone.
#[tokio::test]
async fn oversized_header_is_refused_before_any_body_byte() -> TestResult {
    init();
    let dir = tempfile::tempdir()?;
    generate_cluster_certs(dir.path(), &[(1, vec![]), (9, vec![])])?;
    let cluster = Uuid::new_v4();
    let server = node(1, certs_security(dir.path(), 1), Some(cluster)).await?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in
        rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(dir.path().join("ca.pem"))?))
    {
        roots.add(c?)?;
    }
    let chain = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(
        dir.path().join("node-9.pem"),
    )?))
    .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(
        dir.path().join("node-9.key"),
    )?))?
    .ok_or("no key")?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client(loopback())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint.connect(server.t.local_addr(), CLUSTER_SERVER_NAME)?.await?;

    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&Hello { node_id: 9, mac: None }.encode()).await?;
    let mut hello = [0u8; HELLO_FIXED_LEN];
    recv.read_exact(&mut hello).await?;
    assert_eq!(Hello::decode_fixed(&hello)?, (1, 0));

    let (mut send, mut recv) = conn.open_bi().await?;
    let header = RequestHeader {
        cluster_id: Some(cluster),
        group: 0,
        kind: RpcKind::Append as u8,
        request_id: 77,
        len: u32::MAX,
    };
    send.write_all(&header.encode()).await?;
    // No body, no finish: a server that waited for the body would never answer.
    let mut reply = [0u8; RESPONSE_HEADER_LEN];
    tokio::time::timeout(T, recv.read_exact(&mut reply)).await??;
    let reply = ResponseHeader::decode(&reply)?;
    assert_eq!(reply.status, Status::FrameTooLarge);
    assert_eq!(reply.header.request_id, 77);
    assert_eq!(server.echo.calls.load(Ordering::SeqCst), 0);

    // A corrupt header (bad magic) gets an error reply too, not a crash.
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[0x16; 32]).await?;
    let mut reply = [0u8; RESPONSE_HEADER_LEN];
    tokio::time::timeout(T, recv.read_exact(&mut reply)).await??;
    assert_eq!(ResponseHeader::decode(&reply)?.status, Status::BadRequest);

    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    server.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn wrong_cluster_secret_is_refused_with_an_auth_error() -> TestResult {
    let id = Some(Uuid::new_v4());
    let a = node(1, Security::Secret("alpha".into()), id).await?;
    let b = node(2, Security::Secret("beta".into()), id).await?;
    link(&a, 1, &b, 2);
    let err = a.t.call(2, 0, RpcKind::Vote, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::Auth(_))), "{err:?}");
    let err = b.t.call(1, 0, RpcKind::Vote, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::Auth(_))), "{err:?}");
    // A node without any secret is refused as well.
    let c = node(3, Security::InsecureDev, id).await?;
    c.t.set_peer(1, a.t.local_addr());
    let err = c.t.call(1, 0, RpcKind::Vote, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::Auth(_))), "{err:?}");
    assert_eq!(a.echo.calls.load(Ordering::SeqCst) + b.echo.calls.load(Ordering::SeqCst), 0);
    for n in [a, b, c] {
        n.t.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn cluster_id_mismatch_is_refused_naming_both_ids() -> TestResult {
    let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
    let a = node(1, secret(), Some(x)).await?;
    let b = node(2, secret(), Some(y)).await?;
    link(&a, 1, &b, 2);
    let err = a.t.call(2, 0, RpcKind::Append, Bytes::new(), T).await;
    match err {
        Err(e @ TransportError::ClusterMismatch { ours, theirs }) => {
            assert_eq!((ours, theirs), (x, y));
            let msg = e.to_string();
            assert!(msg.contains(&x.to_string()) && msg.contains(&y.to_string()), "{msg}");
        }
        other => panic!("expected ClusterMismatch, got {other:?}"),
    }
    assert_eq!(b.echo.calls.load(Ordering::SeqCst), 0);
    assert_eq!((a.cell.get(), b.cell.get()), (Some(x), Some(y)));
    a.t.shutdown().await;
    b.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_cluster_id_is_adopted_from_a_peer() -> TestResult {
    let x = Uuid::new_v4();
    let known = node(1, secret(), Some(x)).await?;
    // A new node learns the id from the reply to its own request...
    let caller = node(2, secret(), None).await?;
    let mut caller_watch = caller.cell.subscribe();
    link(&known, 1, &caller, 2);
    caller.t.call(1, 0, RpcKind::Admin, Bytes::new(), T).await?;
    assert_eq!(caller.cell.get(), Some(x));
    assert!(caller_watch.has_changed()?);
    assert_eq!(*caller_watch.borrow_and_update(), Some(x));
    // ...and from a request it serves.
    let callee = node(3, secret(), None).await?;
    link(&known, 1, &callee, 3);
    known.t.call(3, 0, RpcKind::Append, Bytes::new(), T).await?;
    assert_eq!(tokio::time::timeout(T, callee.cell.wait_known()).await?, x);
    for n in [known, caller, callee] {
        n.t.shutdown().await;
    }
    Ok(())
}

fn certs_security(dir: &Path, id: NodeId) -> Security {
    Security::Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("node-{id}.pem")),
        key: dir.join(format!("node-{id}.key")),
    }
}

#[tokio::test]
async fn certificate_mode_works_and_a_foreign_ca_is_refused() -> TestResult {
    let ours = tempfile::tempdir()?;
    let written = generate_cluster_certs(
        ours.path(),
        &[(1, vec!["127.0.0.1".into()]), (2, vec!["node2.example".into()])],
    )?;
    assert_eq!(written.len(), 6);
    let id = Some(Uuid::new_v4());
    let a = node(1, certs_security(ours.path(), 1), id).await?;
    let b = node(2, certs_security(ours.path(), 2), id).await?;
    link(&a, 1, &b, 2);
    assert_eq!(
        a.t.call(2, 4, RpcKind::Read, Bytes::from_static(b"q"), T).await?,
        Bytes::from_static(b"1/4/Read:q")
    );
    assert_eq!(
        b.t.call(1, 4, RpcKind::Read, Bytes::from_static(b"q"), T).await?,
        Bytes::from_static(b"2/4/Read:q")
    );

    // A certificate added later for node 3 with the same CA key joins the cluster.
    let added = generate_cluster_certs(ours.path(), &[(3, vec![])])?;
    assert_eq!(added.len(), 2, "the existing CA is reused, not rewritten");
    let c = node(3, certs_security(ours.path(), 3), id).await?;
    link(&a, 1, &c, 3);
    assert_eq!(c.t.call(1, 0, RpcKind::Vote, Bytes::new(), T).await?, Bytes::from_static(b"3/0/Vote:"));

    // Node 4's certificate comes from another CA: refused in both directions.
    let foreign = tempfile::tempdir()?;
    generate_cluster_certs(foreign.path(), &[(4, vec![])])?;
    let foreign_security = Security::Certs {
        ca: foreign.path().join("ca.pem"),
        cert: foreign.path().join("node-4.pem"),
        key: foreign.path().join("node-4.key"),
    };
    let d = node(4, foreign_security, id).await?;
    link(&a, 1, &d, 4);
    let err = d.t.call(1, 0, RpcKind::Vote, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::Auth(_))), "{err:?}");
    let err = a.t.call(4, 0, RpcKind::Vote, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::Auth(_))), "{err:?}");
    assert_eq!(d.echo.calls.load(Ordering::SeqCst), 0);
    for n in [a, b, c, d] {
        n.t.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn snapshot_file_arrives_with_identical_bytes() -> TestResult {
    let (a, b) = pair(secret()).await?;
    let src_dir = tempfile::tempdir()?;
    let src = src_dir.path().join("group-5.snap");
    // 5 MiB + a few bytes of pseudo-random data (not a multiple of any chunk size).
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..(5 << 20) + 12_345)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&src, &data)?;
    let reply =
        a.t.send_snapshot(2, 5, Bytes::from_static(b"meta: term 3"), &src, Duration::from_secs(30)).await?;
    let received = PathBuf::from(String::from_utf8(reply.to_vec())?);
    assert_eq!(std::fs::read(&received)?, data);
    let snaps = b.echo.snapshots.lock().map_err(|_| "poisoned")?.clone();
    assert_eq!(snaps.len(), 1);
    assert_eq!((snaps[0].0, snaps[0].1, snaps[0].2.as_ref()), (1, 5, b"meta: term 3".as_ref()));
    // Requests keep flowing on the same connection.
    assert_eq!(a.t.call(2, 5, RpcKind::Append, Bytes::new(), T).await?, Bytes::from_static(b"1/5/Append:"));
    a.t.shutdown().await;
    b.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_down_peer_fails_fast() -> TestResult {
    let a = node(1, secret(), Some(Uuid::new_v4())).await?;
    // A UDP socket that never answers: the dial times out after the connect timeout.
    let hole = std::net::UdpSocket::bind(loopback())?;
    a.t.set_peer(2, hole.local_addr()?);
    // A node that has shut down: its port is closed.
    let gone = node(3, secret(), None).await?;
    let gone_addr = gone.t.local_addr();
    gone.t.shutdown().await;
    drop(gone);
    a.t.set_peer(3, gone_addr);
    for peer in [2, 3, 2] {
        let start = Instant::now();
        let err = a.t.call(peer, 0, RpcKind::Append, Bytes::new(), Duration::from_secs(10)).await;
        assert!(
            matches!(err, Err(TransportError::Unreachable { peer: p, .. } | TransportError::Timeout { peer: p, .. }) if p == peer),
            "{err:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    }
    a.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn calls_to_self_or_unknown_nodes_are_refused() -> TestResult {
    let a = node(1, secret(), None).await?;
    let err = a.t.call(1, 0, RpcKind::Append, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::SelfTarget(1))), "{err:?}");
    let err = a.t.call(9, 0, RpcKind::Append, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::UnknownPeer(9))), "{err:?}");
    a.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_completes_and_later_calls_fail() -> TestResult {
    let (a, b) = pair(Security::InsecureDev).await?;
    a.t.call(2, 0, RpcKind::Append, Bytes::new(), T).await?;
    b.t.call(1, 0, RpcKind::Append, Bytes::new(), T).await?;
    tokio::time::timeout(T, a.t.shutdown()).await?;
    let err = a.t.call(2, 0, RpcKind::Append, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::Closed)), "{err:?}");
    let err = b.t.call(1, 0, RpcKind::Append, Bytes::new(), Duration::from_secs(3)).await;
    assert!(err.is_err(), "{err:?}");
    tokio::time::timeout(T, b.t.shutdown()).await?;
    Ok(())
}

#[tokio::test]
async fn a_hung_handler_times_out_and_does_not_block_shutdown() -> TestResult {
    let (a, b) = pair(secret()).await?;
    let after = Duration::from_millis(300);
    let err = a.t.call(2, 0, RpcKind::Read, Bytes::from_static(b"hang"), after).await;
    assert!(matches!(err, Err(TransportError::Timeout { peer: 2, after: d }) if d == after), "{err:?}");
    // Other requests on the same connection are not held up by the stuck one.
    let stuck = tokio::spawn({
        let t = a.t.clone();
        async move { t.call(2, 0, RpcKind::Read, Bytes::from_static(b"hang"), Duration::from_secs(60)).await }
    });
    assert_eq!(a.t.call(2, 0, RpcKind::Vote, Bytes::new(), T).await?, Bytes::from_static(b"1/0/Vote:"));
    // b's stuck handler tasks are cancelled by its shutdown; a's pending call then fails.
    tokio::time::timeout(T, b.t.shutdown()).await?;
    let stuck = tokio::time::timeout(T, stuck).await??;
    assert!(stuck.is_err(), "{stuck:?}");
    a.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_moved_peer_is_dialled_at_its_new_address_and_a_removed_one_is_unknown() -> TestResult {
    let cluster = Some(Uuid::new_v4());
    let (a, old_b) = (node(1, secret(), cluster).await?, node(2, secret(), cluster).await?);
    link(&a, 1, &old_b, 2);
    a.t.call(2, 0, RpcKind::Append, Bytes::new(), T).await?;
    old_b.t.shutdown().await;
    let new_b = node(2, secret(), cluster).await?;
    a.t.set_peer(2, new_b.t.local_addr());
    assert_eq!(a.t.call(2, 1, RpcKind::Append, Bytes::new(), T).await?, Bytes::from_static(b"1/1/Append:"));
    assert_eq!(new_b.echo.calls.load(Ordering::SeqCst), 1);
    a.t.remove_peer(2);
    let err = a.t.call(2, 0, RpcKind::Append, Bytes::new(), T).await;
    assert!(matches!(err, Err(TransportError::UnknownPeer(2))), "{err:?}");
    a.t.shutdown().await;
    new_b.t.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_wrong_node_behind_an_address_is_not_used() -> TestResult {
    let cluster = Some(Uuid::new_v4());
    let (a, c) = (node(1, secret(), cluster).await?, node(3, secret(), cluster).await?);
    // Misconfiguration: node 2's address actually belongs to node 3.
    a.t.set_peer(2, c.t.local_addr());
    let err = a.t.call(2, 0, RpcKind::Append, Bytes::new(), T).await;
    assert!(
        matches!(&err, Err(TransportError::Unreachable { peer: 2, reason }) if reason.contains("answers as node 3")),
        "{err:?}"
    );
    assert_eq!(c.echo.calls.load(Ordering::SeqCst), 0);
    a.t.shutdown().await;
    c.t.shutdown().await;
    Ok(())
}

/// Compile-time check: the raft layer spawns these futures on the multi-threaded runtime.
fn _transport_futures_are_send(t: &Transport, cfg: TransportConfig, cell: Arc<ClusterIdCell>) {
    fn send<F: std::future::Future + Send>(_: F) {}
    send(t.call(2, 0, RpcKind::Append, Bytes::new(), T));
    send(t.send_snapshot(2, 0, Bytes::new(), Path::new("snap"), T));
    send(t.shutdown());
    send(Transport::start(cfg, cell, Arc::new(Echo::default())));
    fn shareable<S: Send + Sync + Clone + 'static>(_: &S) {}
    shareable(t);
}
