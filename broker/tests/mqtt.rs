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
async fn receive(port: u16, id: &str, got: &Received, want: usize, stop_after: Option<usize>) {
    let (client, mut events) = rust_client(id, port, false);
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.lock().len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                let b: [u8; 8] = p.payload.as_ref().try_into().expect("8 bytes");
                got.lock().insert(u64::from_be_bytes(b));
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
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("subscribe: {other:?}"),
        }
    }
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
    let mut c = Cluster::new(3);
    c.start_all();
    for id in 1..=3 {
        assert!(wait_healthy(c.node(id), Duration::from_secs(60)).await, "node {id}:\n{}", c.logs());
    }
    assert!(common::wait_all_led(c.node(1), &[1, 2, 3], Duration::from_secs(30)).await.is_some());
    let (p1, p2, p3) = (c.node(1).mqtt_port, c.node(2).mqtt_port, c.node(3).mqtt_port);
    let got: Received = Default::default();
    // subscribe on node 1, stay connected
    let (client, mut events) = rust_client("dur-sub", p1, false);
    client.subscribe("dur/t", QoS::AtLeastOnce).await.expect("subscribe");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("subscribe: {other:?}\n{}", c.logs()),
        }
    }
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
    let mut c = Cluster::new(3);
    c.start_all();
    for id in 1..=3 {
        assert!(wait_healthy(c.node(id), Duration::from_secs(60)).await, "node {id}:\n{}", c.logs());
    }
    assert!(common::wait_all_led(c.node(1), &[1, 2, 3], Duration::from_secs(30)).await.is_some());
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
