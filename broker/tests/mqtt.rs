//! MQTT with real clients against real `ironhub serve` processes: the paho spec suite (3.1.1 and 5),
//! mosquitto_pub/sub, a Rust client (rumqttc), TLS, WebSocket and QUIC listeners, and the durability
//! cases (kill -9 of a subscriber's node, whole-cluster restart).

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tail, wait_healthy, Cluster};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn python_has_paho() -> bool {
    Command::new("python3").args(["-c", "import paho.mqtt"]).status().is_ok_and(|s| s.success())
}

/// A single node with the spec suite's configuration.
async fn single_node(extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(1);
    let config = c.dir.path().join("ironhub.toml");
    std::fs::write(&config, "[mqtt]\ndeny_filters = [\"secret/#\"]\nconnect_rate_per_min = 100000\n")
        .expect("config");
    let n = c.node(1);
    n.extra = vec!["--config".into(), config.display().to_string()];
    n.extra.extend(extra.iter().map(|s| s.to_string()));
    c.start_all();
    assert!(wait_healthy(c.node(1), Duration::from_secs(30)).await, "not healthy:\n{}", c.logs());
    c
}

/// Three nodes (with `config` as their configuration file), healthy and every group led.
async fn three_nodes(config: Option<&str>) -> Cluster {
    let mut c = Cluster::new(3);
    if let Some(text) = config {
        let path = c.dir.path().join("ironhub.toml");
        std::fs::write(&path, text).expect("config");
        for id in 1..=3 {
            c.node(id).extra = vec!["--config".into(), path.display().to_string()];
        }
    }
    c.start_all();
    for id in 1..=3 {
        assert!(wait_healthy(c.node(id), Duration::from_secs(60)).await, "node {id}:\n{}", c.logs());
    }
    assert!(common::wait_all_led(c.node(1), &[1, 2, 3], Duration::from_secs(30)).await.is_some());
    c
}

/// Polls `events` until the SUBACK arrives.
async fn wait_suback(events: &mut rumqttc::EventLoop) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => return,
            Ok(Ok(_)) => {}
            other => panic!("subscribe: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_spec_suite_v311_and_v5() {
    assert!(python_has_paho(), "paho-mqtt missing: `make deps` installs it (pip install paho-mqtt)");
    let mut c = single_node(&[]).await;
    let port = c.node(1).mqtt_port;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt_spec.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").args([script, &port.to_string()]).output().expect("run python3")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "spec suite failed:\n{text}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(!text.contains("FAIL"), "{text}");
}

fn mosquitto_sub(port: u16, args: &[&str]) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub")
}

fn mosquitto_pub(port: u16, args: &[&str]) -> bool {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn output_lines(child: std::process::Child) -> Vec<String> {
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_qos_0_1_2_retained_and_offline_queue() {
    assert!(have("mosquitto_sub"), "mosquitto-clients missing: `make deps` installs them");
    let mut c = single_node(&[]).await;
    let port = c.node(1).mqtt_port;
    tokio::task::spawn_blocking(move || {
        for v in ["mqttv311", "mqttv5", "mqttv31"] {
            for q in ["0", "1", "2"] {
                let topic = format!("rt/{v}/{q}");
                let sub = mosquitto_sub(port, &["-V", v, "-q", q, "-t", &topic, "-C", "1", "-W", "5"]);
                std::thread::sleep(Duration::from_millis(400));
                assert!(mosquitto_pub(port, &["-V", v, "-q", q, "-t", &topic, "-m", &format!("hello-{q}")]));
                assert_eq!(output_lines(sub), [format!("hello-{q}")], "{v} qos {q}");
            }
        }
        assert!(mosquitto_pub(port, &["-q", "1", "-r", "-t", "keep/me", "-m", "kept"]));
        assert_eq!(output_lines(mosquitto_sub(port, &["-t", "keep/me", "-C", "1", "-W", "3"])), ["kept"]);
        // persistent session: subscribe, go away, 20 messages, come back
        output_lines(mosquitto_sub(port, &["-c", "-i", "ps-1", "-q", "1", "-t", "ps/t", "-W", "1"]));
        for i in 0..20 {
            assert!(mosquitto_pub(port, &["-q", "1", "-t", "ps/t", "-m", &format!("m{i}")]));
        }
        let got = output_lines(mosquitto_sub(
            port,
            &["-c", "-i", "ps-1", "-q", "1", "-t", "ps/t", "-C", "20", "-W", "5"],
        ));
        assert_eq!(got, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// A rumqttc client; returns the client and its event loop.
fn rust_client(id: &str, port: u16, clean: bool) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    AsyncClient::new(o, 1000)
}

/// A publisher on one connection: `publish(from, n)` sends QoS 1 messages `from..from+n` (8-byte
/// sequence payloads) and returns once every one is acknowledged.
struct Publisher {
    client: AsyncClient,
    events: rumqttc::EventLoop,
    topic: String,
}

impl Publisher {
    fn new(port: u16, topic: &str) -> Self {
        let (client, events) = rust_client(&format!("pub-{}-{topic}", std::process::id()), port, true);
        Self { client, events, topic: topic.to_string() }
    }

    async fn publish(&mut self, from: u64, n: u64) {
        let mut acked = 0;
        let mut next = from;
        while acked < n {
            // keep at most 100 in flight (the client's inflight window)
            while next < from + n && next - from - acked < 100 {
                self.client
                    .try_publish(&self.topic, QoS::AtLeastOnce, false, next.to_be_bytes().to_vec())
                    .expect("queue publish");
                next += 1;
            }
            match tokio::time::timeout(Duration::from_secs(20), self.events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("publisher: {e}"),
                Err(_) => panic!("publisher stalled at {acked}/{n}"),
            }
        }
    }
}

/// Publishes `n` acknowledged QoS 1 messages from a fresh connection.
async fn publish_acked(port: u16, topic: &str, from: u64, n: u64) {
    let mut p = Publisher::new(port, topic);
    p.publish(from, n).await;
    let _ = p.client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), p.events.poll()).await;
}

type Received = std::sync::Arc<parking_lot::Mutex<BTreeSet<u64>>>;

/// Receives on a persistent session until `want` distinct sequence numbers arrived, or drops the
/// connection without DISCONNECT after `stop_after` messages (unacknowledged ones come again).
/// Acknowledges each message only once it is recorded: rumqttc's automatic acks would also
/// acknowledge messages it read in the same batch but never handed to us before we stop.
async fn receive(port: u16, id: &str, got: &Received, want: usize, stop_after: Option<usize>) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    o.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(o, 1000);
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let b: [u8; 8] = p.payload.as_ref().try_into().expect("8 bytes");
                got.lock().insert(u64::from_be_bytes(b));
                client.try_ack(&p).expect("queue the PUBACK");
                seen += 1;
                if stop_after.is_some_and(|s| seen >= s) {
                    return;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber {id}: {e}"),
            Err(_) => break,
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
}

async fn subscribe_persistent(port: u16, id: &str, filter: &str) {
    let (client, mut events) = rust_client(id, port, false);
    client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
    wait_suback(&mut events).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_ids_wrap_under_reconnects_and_no_acked_message_is_missing() {
    let mut c = single_node(&[]).await;
    let port = c.node(1).mqtt_port;
    // More messages than packet ids exist in both directions (65535 inbound on one publisher
    // connection, 32767 queue-derived ids outbound), in slices below the queue limit (150) so
    // nothing overflows, while the subscriber drops its connection at varying points.
    subscribe_persistent(port, "wrap-sub", "wrap/t").await;
    let total: u64 = 70_000;
    let got: Received = Default::default();
    let sub = {
        let got = got.clone();
        tokio::spawn(async move {
            let mut round = 0u64;
            while got.lock().len() < total as usize && round < 10_000 {
                round += 1;
                let stop = if round.is_multiple_of(2) { (round * 37 % 400) as usize + 1 } else { 5_000 };
                receive(port, "wrap-sub", &got, total as usize, Some(stop)).await;
            }
        })
    };
    let mut p = Publisher::new(port, "wrap/t");
    let mut sent = 0;
    while sent < total {
        let n = 140.min(total - sent);
        p.publish(sent, n).await;
        sent += n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while (got.lock().len() as u64) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), sub).await;
    let got = got.lock();
    let missing: Vec<u64> = (0..total).filter(|i| !got.contains(i)).take(10).collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages never delivered: {missing:?}...\n{}",
        tail(&c.logs(), 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_subscribers_node_loses_no_acked_message() {
    let mut c = three_nodes(None).await;
    let (p1, p2, p3) = (c.node(1).mqtt_port, c.node(2).mqtt_port, c.node(3).mqtt_port);
    let got: Received = Default::default();
    // subscribe on node 1, stay connected
    let (client, mut events) = rust_client("dur-sub", p1, false);
    client.subscribe("dur/t", QoS::AtLeastOnce).await.expect("subscribe");
    wait_suback(&mut events).await;
    publish_acked(p2, "dur/t", 0, 100).await;
    c.node(1).kill9();
    drop(events);
    // reconnect to node 3: every acknowledged message arrives
    receive(p3, "dur-sub", &got, 100, None).await;
    let n = got.lock().len();
    assert_eq!(n, 100, "after kill -9 of the subscriber's node: {n} of 100\n{}", c.logs());
    // and the session keeps working there
    publish_acked(p2, "dur/t", 100, 20).await;
    receive(p3, "dur-sub", &got, 120, None).await;
    assert_eq!(got.lock().len(), 120, "{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_sessions_queues_and_retained() {
    let mut c = three_nodes(None).await;
    let (p1, p2) = (c.node(1).mqtt_port, c.node(2).mqtt_port);
    subscribe_persistent(p1, "restart-sub", "rs/t").await;
    publish_acked(p2, "rs/t", 0, 30).await;
    let (rc, mut rev) = rust_client("retainer", p2, true);
    rc.publish("rs/retained", QoS::AtLeastOnce, true, b"still-here".to_vec()).await.expect("publish");
    loop {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = rev.poll().await {
            break;
        }
    }
    for id in 1..=3 {
        c.node(id).kill9();
    }
    c.start_all();
    for id in 1..=3 {
        assert!(wait_healthy(c.node(id), Duration::from_secs(60)).await, "node {id}:\n{}", c.logs());
    }
    assert!(common::wait_all_led(c.node(1), &[1, 2, 3], Duration::from_secs(30)).await.is_some());
    let got: Received = Default::default();
    receive(c.node(3).mqtt_port, "restart-sub", &got, 30, None).await;
    assert_eq!(got.lock().len(), 30, "queue after whole-cluster restart:\n{}", c.logs());
    let port = c.node(1).mqtt_port;
    let retained = tokio::task::spawn_blocking(move || {
        output_lines(mosquitto_sub(port, &["-t", "rs/retained", "-C", "1", "-W", "5"]))
    })
    .await
    .expect("join");
    assert_eq!(retained, ["still-here"]);
}

/// paho over TLS, WebSocket and secure WebSocket, then a raw MQTT client over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_websocket_secure_websocket_and_quic_listeners() {
    assert!(python_has_paho(), "paho-mqtt missing: `make deps` installs it");
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
    let port = |_| common::free_ports().0;
    let (mqtts, ws, wss) = (port(()), port(()), port(()));
    let quic = common::free_ports().1;
    let args = [
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--mqtts".into(),
        format!("127.0.0.1:{mqtts}"),
        "--wss".into(),
        format!("127.0.0.1:{wss}"),
        "--quic".into(),
        format!("127.0.0.1:{quic}"),
    ];
    let mut c = Cluster::new(1);
    c.node(1).extra = args.to_vec();
    // the test nodes turn WebSocket off by default; this one listens
    let peers = c.peers.clone();
    c.node(1).extra.extend(["--ws".into(), format!("127.0.0.1:{ws}")]);
    c.node(1).start(&peers, common::SECRET);
    assert!(wait_healthy(c.node(1), Duration::from_secs(30)).await, "{}", c.logs());
    let tcp = c.node(1).mqtt_port;

    let script = format!(
        r#"
import queue, ssl, sys, paho.mqtt.client as mqtt
def client(transport, port, tls):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport=transport, protocol=mqtt.MQTTv311)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    if tls:
        c.tls_set(ca_certs="{cert}")
    q = queue.Queue()
    c.on_message = lambda c, u, m: q.put(m.payload)
    c.connect("localhost", port)
    c.loop_start()
    return c, q
for name, (t, p, tls) in {{"tls": ("tcp", {mqtts}, True), "ws": ("websockets", {ws}, False), "wss": ("websockets", {wss}, True)}}.items():
    s, q = client(t, p, tls)
    s.subscribe("lst/" + name, 1)[0]
    import time; time.sleep(0.5)
    pub, _ = client("tcp", {tcp}, False)
    pub.publish("lst/" + name, name.encode(), qos=1).wait_for_publish(5)
    got = q.get(timeout=5)
    assert got == name.encode(), got
    print("ok", name)
    s.disconnect(); pub.disconnect()
"#,
        cert = cert.display()
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").args(["-c", &script]).output().expect("python3")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}\n{}", String::from_utf8_lossy(&out.stderr), c.logs());
    assert_eq!(text.lines().count(), 3, "{text}");

    // MQTT over QUIC: one bidirectional stream is one MQTT connection.
    use ironhub_broker::mqtt::codec::{self, v4, Packet as Wire, Protocol, QoS as WireQoS};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"mqtt".to_vec()];
    let qcfg = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(qcfg)));
    let conn = endpoint
        .connect(format!("127.0.0.1:{quic}").parse().expect("addr"), "localhost")
        .expect("connect")
        .await
        .unwrap_or_else(|e| panic!("QUIC handshake: {e}\n{}", c.logs()));
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let mut out = bytes::BytesMut::new();
    let connect = v4::Connect::new("quic-client");
    codec::write(&Wire::V4(v4::Packet::Connect(connect)), &mut out).expect("encode");
    let mut sub = v4::Subscribe::new("lst/quic", WireQoS::AtLeastOnce);
    sub.pkid = 1;
    codec::write(&Wire::V4(v4::Packet::Subscribe(sub)), &mut out).expect("encode");
    send.write_all(&out).await.expect("send");
    let mut buf = bytes::BytesMut::new();
    let mut packets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        while let Some(p) = codec::read(&mut buf, Protocol::V4, 1 << 20).expect("decode") {
            packets.push(p);
        }
        if packets.iter().any(|p| matches!(p, Wire::V4(v4::Packet::SubAck(_)))) && packets.len() == 2 {
            assert!(mosquitto_pub(tcp, &["-q", "1", "-t", "lst/quic", "-m", "over-quic"]));
        }
        if packets
            .iter()
            .any(|p| matches!(p, Wire::V4(v4::Packet::Publish(x)) if x.payload.as_ref() == b"over-quic"))
        {
            break;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut chunk)).await {
            Ok(Ok(Some(n))) => buf.extend_from_slice(&chunk[..n]),
            other => panic!("QUIC stream: {other:?} after {packets:?}\n{}", c.logs()),
        }
    }
    assert!(
        matches!(packets.first(), Some(Wire::V4(v4::Packet::ConnAck(a))) if a.code == v4::ConnectReturnCode::Success)
    );
    assert!(
        packets
            .iter()
            .any(|p| matches!(p, Wire::V4(v4::Packet::Publish(x)) if x.payload.as_ref() == b"over-quic")),
        "{packets:?}"
    );
}

/// A clean CONNECT (MQTT 3.1.1 or 5) as raw bytes.
fn connect_packet(client: &str, v5: bool) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', if v5 { 5 } else { 4 }, 0x02, 0, 60];
    if v5 {
        body.push(0); // no properties
    }
    body.extend((client.len() as u16).to_be_bytes());
    body.extend(client.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend(body);
    p
}

/// Connects with a raw CONNECT; returns the stream and the CONNACK's return (3.x) or reason (5) code.
async fn connack(port: u16, client: &str, v5: bool) -> (tokio::net::TcpStream, u8) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(&connect_packet(client, v5)).await.expect("send CONNECT");
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.expect("CONNACK header");
    assert_eq!(head[0], 0x20, "not a CONNACK");
    let mut body = vec![0u8; head[1] as usize];
    s.read_exact(&mut body).await.expect("CONNACK body");
    (s, body[1])
}

async fn metrics_text(node: &common::Node) -> String {
    let r = common::client().get(node.url("/metrics")).send().await.expect("GET /metrics");
    r.text().await.expect("metrics body")
}

/// Waits until the node counts `n` open MQTT connections.
async fn wait_connections(node: &common::Node, n: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    while sample(&metrics_text(node).await, "ironhub_mqtt_connections") != Some(n as f64) {
        assert!(Instant::now() < until, "the node does not count {n} connections");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one sample line (`name{labels} value`) in a Prometheus text page.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Per-client connection rate and per-node connection limit refuse with the right codes (5 and
/// 3.1.1), queue overflow drops the oldest, and every metric family docs/mqtt.md lists is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_refuse_with_the_right_codes_and_every_metric_is_exported() {
    let mut c = Cluster::new(1);
    let config = c.dir.path().join("ironhub.toml");
    std::fs::write(&config, "[mqtt]\nconnect_rate_per_min = 2\nmax_connections = 3\nmax_queue = 5\n")
        .expect("config");
    c.node(1).extra = vec!["--config".into(), config.display().to_string()];
    c.start_all();
    assert!(wait_healthy(c.node(1), Duration::from_secs(30)).await, "not healthy:\n{}", c.logs());
    let port = c.node(1).mqtt_port;

    // The third connection attempt of one client id within a minute is refused.
    for (id, v5, refused) in [("rate-5", true, 0x9F), ("rate-4", false, 3)] {
        for _ in 0..2 {
            assert_eq!(connack(port, id, v5).await.1, 0, "{id}: attempt within the rate");
            wait_connections(c.node(1), 0).await;
        }
        assert_eq!(connack(port, id, v5).await.1, refused, "{id}: attempt over the rate");
        wait_connections(c.node(1), 0).await;
    }

    // Three held connections fill the node; the fourth is refused.
    let mut held = Vec::new();
    for i in 0..3 {
        let (s, code) = connack(port, &format!("hold-{i}"), true).await;
        assert_eq!(code, 0);
        held.push(s);
    }
    let text = metrics_text(c.node(1)).await;
    assert_eq!(sample(&text, "ironhub_mqtt_connections"), Some(3.0), "{text}");
    assert_eq!(connack(port, "over-5", true).await.1, 0x97, "v5: quota exceeded");
    assert_eq!(connack(port, "over-4", false).await.1, 3, "3.1.1: server unavailable");
    // A malformed packet (type 0 is reserved) closes only its connection, counted.
    {
        use tokio::io::AsyncWriteExt;
        held[0].write_all(&[0x00, 0x00]).await.expect("send");
    }
    drop(held);
    let text = metrics_text(c.node(1)).await;
    assert_eq!(sample(&text, "ironhub_mqtt_connects_total{result=\"rate\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "ironhub_mqtt_connects_total{result=\"max_connections\"}"), Some(2.0));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An offline session with max_queue = 5 keeps the newest five of ten.
    subscribe_persistent(port, "overflow-sub", "m/t").await;
    wait_connections(c.node(1), 0).await;
    publish_acked(port, "m/t", 0, 10).await;
    // Wait for the fan-out: a subscriber that comes back earlier may get the first message too.
    let until = Instant::now() + Duration::from_secs(10);
    let dropped = "ironhub_queue_dropped_total{reason=\"queue_full\"}";
    while sample(&metrics_text(c.node(1)).await, dropped) != Some(5.0) {
        assert!(Instant::now() < until, "five messages not dropped from the full queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got: Received = Default::default();
    receive(port, "overflow-sub", &got, 5, None).await;
    assert_eq!(*got.lock(), (5..10).collect::<BTreeSet<u64>>(), "the oldest are dropped");

    tokio::time::sleep(Duration::from_millis(1500)).await; // a timer tick sets the depth gauges
    let text = metrics_text(c.node(1)).await;
    // The per-packet series (handles looked up once) count what went through: 10 QoS 1 PUBLISHes
    // in, 5 delivered.
    let at_least = |series: &str, n: f64| {
        let v = sample(&text, series);
        assert!(v.is_some_and(|v| v >= n), "{series} = {v:?}, want >= {n}");
    };
    at_least("ironhub_mqtt_packets_total{dir=\"in\",type=\"publish\"}", 10.0);
    at_least("ironhub_mqtt_packets_total{dir=\"out\",type=\"puback\"}", 10.0);
    at_least("ironhub_mqtt_messages_total{dir=\"in\",qos=\"1\"}", 10.0);
    at_least("ironhub_mqtt_messages_total{dir=\"out\",qos=\"1\"}", 5.0);
    at_least("ironhub_mqtt_bytes_total{dir=\"in\"}", 100.0);
    at_least("ironhub_publish_deliver_seconds_count{qos=\"1\"}", 5.0);
    at_least("ironhub_raft_state_cache_total{result=\"hit\"}", 1.0);
    // The API takes retained topics up to mqtt.max_topic_len (255), like MQTT.
    let long = "t".repeat(256);
    let r =
        common::put(&c.node(1).url(&format!("/api/v1/retained/{long}")), serde_json::json!({"payload": "x"}))
            .await;
    assert_eq!(
        r.map(|(status, body)| (status, body["error"]["code"].clone())),
        Some((400, "bad_topic".into()))
    );
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/mqtt.md")).expect("docs");
    let families: BTreeSet<&str> = docs
        .lines()
        .filter(|l| l.starts_with("| `ironhub_"))
        .flat_map(|l| l.split('|').nth(1).unwrap_or("").split(',').map(|n| n.trim().trim_matches('`')))
        .collect();
    assert!(families.len() >= 12, "metric table not found in docs/mqtt.md: {families:?}");
    for name in families {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} is documented but not exported:\n{text}");
    }
}

/// QoS 1 PUBLISHes of one connection keep their order when its node does not lead the
/// publisher's partition (they are forwarded to the leader), checked for publishers on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_publishes_keep_their_order() {
    let mut c = three_nodes(Some("[mqtt]\nmax_queue = 10000\n")).await;
    let ports: Vec<u16> = (1..=3).map(|id| c.node(id).mqtt_port).collect();
    const N: u64 = 1000;
    // The subscriber stays connected and records arrival order per publisher.
    let (client, mut events) = rust_client("order-sub", ports[0], false);
    client.subscribe("ord/+", QoS::AtLeastOnce).await.expect("subscribe");
    wait_suback(&mut events).await;
    let subscriber = tokio::spawn(async move {
        let mut last: [Option<u64>; 3] = [None; 3];
        let (mut n, mut out_of_order) = (0, Vec::new());
        while n < 3 * N {
            match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let v = u64::from_be_bytes(p.payload.as_ref().try_into().expect("8 bytes"));
                    let from = (v >> 32) as usize;
                    if last[from].is_some_and(|l| v <= l) {
                        out_of_order.push((last[from], v));
                    }
                    last[from] = Some(v);
                    n += 1;
                }
                Ok(Ok(_)) => {}
                other => return Err(format!("subscriber after {n}: {other:?}")),
            }
        }
        let _ = client.disconnect().await;
        Ok(out_of_order)
    });
    let publishers = ports.iter().enumerate().map(|(i, port)| {
        let port = *port;
        tokio::spawn(async move { publish_acked(port, &format!("ord/{i}"), (i as u64) << 32, N).await })
    });
    for p in futures::future::join_all(publishers).await {
        p.expect("publisher");
    }
    let out_of_order = match subscriber.await.expect("subscriber task") {
        Ok(o) => o,
        Err(e) => panic!("{e}\n{}", c.logs()),
    };
    let first = &out_of_order[..out_of_order.len().min(10)];
    assert!(out_of_order.is_empty(), "{} out of order, first {first:?}", out_of_order.len());
}

/// Rule 7 and the session audit. A node cut off from every partition leader closes its clients
/// with DISCONNECT 0x9C (no session lives on a minority side); when a node dies with a client
/// connected, the partition leader ends that session and publishes its will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_closes_its_clients_and_a_dead_nodes_wills_fire() {
    use tokio::io::AsyncReadExt;
    let mut c = three_nodes(None).await;
    let (p1, p3) = (c.node(1).mqtt_port, c.node(3).mqtt_port);

    // Rule 7: nodes 1 and 2 stop answering; node 3 closes its client with 0x9C.
    let (mut s, code) = connack(p3, "cut-off", true).await;
    assert_eq!(code, 0);
    c.node(1).signal("STOP");
    c.node(2).signal("STOP");
    let mut head = [0u8; 3];
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut head)).await;
    c.node(1).signal("CONT");
    c.node(2).signal("CONT");
    assert!(matches!(read, Ok(Ok(_))), "no DISCONNECT from the cut-off node: {read:?}\n{}", c.logs());
    assert_eq!((head[0], head[2]), (0xE0, 0x9C), "DISCONNECT with 0x9C (use another server)");
    assert!(common::wait_all_led(c.node(1), &[1, 2, 3], Duration::from_secs(30)).await.is_some());

    // Session audit: a client with a will on node 3; node 3 is killed; the will arrives on node 1.
    let (watch, mut watch_events) = rust_client("will-watch", p1, true);
    watch.subscribe("wills/#", QoS::AtLeastOnce).await.expect("subscribe");
    wait_suback(&mut watch_events).await;
    let mut o = MqttOptions::new("dying", "127.0.0.1", p3);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_last_will(rumqttc::LastWill::new("wills/dying", "gone", QoS::AtLeastOnce, false));
    let (_dying, mut dying_events) = AsyncClient::new(o, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), dying_events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("connect with a will: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // past the audit's two-tick grace for new owners
    c.node(3).kill9();
    let will = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch_events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => return Some((p.topic, p.payload)),
                Ok(_) => {}
                Err(e) => panic!("will watcher: {e}"),
            }
        }
    })
    .await;
    drop(dying_events);
    let will = will.unwrap_or_else(|_| panic!("the dead node's client's will did not fire\n{}", c.logs()));
    assert_eq!(will, Some(("wills/dying".to_string(), bytes::Bytes::from_static(b"gone"))));
}
