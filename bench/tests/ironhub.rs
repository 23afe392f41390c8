//! Runs short p2p and fan-out scenarios against a real single-node `ironhub serve` on free loopback
//! ports with a temporary data dir, and checks zero loss and sane numbers; then p2p over each of
//! its other listeners (TLS, WebSocket, secure WebSocket, QUIC) with a test certificate.
//!
//! The ironhub binary is `$IRONHUB_BIN`, else `ironhub` beside this test's `ironhub-bench` (same
//! target dir), else `/var/cache/ironhub/target/release/ironhub` (the Makefile's target dir).
//! Skipped (with a message) when none exists: this crate does not build the server.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `ironhub serve` process, killed on drop.
struct Ironhub {
    child: Child,
    mqtt_port: u16,
    /// TLS, WebSocket, secure WebSocket and QUIC (UDP) ports.
    mqtts_port: u16,
    ws_port: u16,
    wss_port: u16,
    quic_port: u16,
    /// The certificate of those listeners (PEM).
    cert: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Ironhub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ironhub {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

fn find_ironhub() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IRONHUB_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let beside = PathBuf::from(env!("CARGO_BIN_EXE_ironhub-bench")).with_file_name("ironhub");
    [beside, PathBuf::from("/var/cache/ironhub/target/release/ironhub")].into_iter().find(|p| p.is_file())
}

/// `GET /healthz` answered 200.
fn healthy(api_port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", api_port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{api_port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    matches!(s.read(&mut head), Ok(n) if n >= 12 && head[..n].starts_with(b"HTTP/1.1 200"))
}

fn start_ironhub() -> Option<Ironhub> {
    let Some(bin) = find_ironhub() else {
        eprintln!(
            "SKIPPED: no ironhub binary (set IRONHUB_BIN, or build it: \
             cargo build --release -p ironhub-broker into /var/cache/ironhub/target)"
        );
        return None;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, mqtt) = (common::free_port(), common::free_port());
    let (mqtts, ws, wss) = (common::free_port(), common::free_port(), common::free_port());
    let udp_port = || UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("udp port").port();
    let (cluster, quic) = (udp_port(), udp_port());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.key_pair.serialize_pem()).expect("key");
    let log = dir.path().join("ironhub.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(&bin)
        .arg("serve")
        .args(["--node-id", "1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--api", &format!("127.0.0.1:{api}")])
        .args(["--mqtt", &format!("127.0.0.1:{mqtt}")])
        .args(["--cluster", &format!("127.0.0.1:{cluster}")])
        .args(["--coap", "off", "--admin-token", "bench-test-token"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--mqtts", &format!("127.0.0.1:{mqtts}"), "--ws", &format!("127.0.0.1:{ws}")])
        .args(["--wss", &format!("127.0.0.1:{wss}"), "--quic", &format!("127.0.0.1:{quic}")])
        .env("IRONHUB_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let node = Ironhub {
        child,
        mqtt_port: mqtt,
        mqtts_port: mqtts,
        ws_port: ws,
        wss_port: wss,
        quic_port: quic,
        cert,
        log,
        _dir: dir,
    };
    // A loaded 2-core machine (a build beside the tests) may need a while to open RocksDB.
    let until = Instant::now() + Duration::from_secs(60);
    while !healthy(api) {
        assert!(Instant::now() < until, "ironhub not healthy within 60 s:\n{}", node.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(node)
}

#[test]
fn p2p_and_fan_out_lose_nothing_against_ironhub() {
    let Some(node) = start_ironhub() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = node.mqtt_port.to_string();
    // QoS 1 in ironhub is three raft commits per delivery: allow seconds, not milliseconds, on a
    // loaded machine; the point is zero loss and ordered, plausible figures.
    let max_latency_us = 10_000_000;

    let out = dir.path().join("p2p.json");
    let r = common::run_bench(
        &[
            "p2p",
            "--port",
            &port,
            "--pairs",
            "3",
            "--duration",
            "2",
            "--rate",
            "50",
            "--qos",
            "1",
            "--drain",
            "10",
        ],
        &out,
    );
    common::assert_clean_run(&r, 3, 3, 1, max_latency_us);

    let out = dir.path().join("fanout.json");
    let r = common::run_bench(
        &[
            "fan-out",
            "--port",
            &port,
            "--subscribers",
            "3",
            "--duration",
            "2",
            "--rate",
            "50",
            "--qos",
            "1",
            "--mqtt",
            "5",
            "--drain",
            "10",
        ],
        &out,
    );
    common::assert_clean_run(&r, 1, 3, 3, max_latency_us);

    // The other transports: TLS and QUIC trusting the test certificate, WebSocket, and secure
    // WebSocket with --insecure.
    let ca = node.cert.display().to_string();
    for (transport, port, tls) in [
        ("tls", node.mqtts_port, vec!["--ca", ca.as_str()]),
        ("ws", node.ws_port, vec![]),
        ("wss", node.wss_port, vec!["--insecure"]),
        ("quic", node.quic_port, vec!["--ca", ca.as_str()]),
    ] {
        let out = dir.path().join(format!("{transport}.json"));
        let port = port.to_string();
        let mut args = vec![
            "p2p",
            "--transport",
            transport,
            "--port",
            &port,
            "--pairs",
            "2",
            "--duration",
            "1",
            "--rate",
            "40",
            "--qos",
            "1",
            "--drain",
            "10",
        ];
        args.extend(tls);
        let r = common::run_bench(&args, &out);
        assert_eq!(r["transport"], transport);
        common::assert_clean_run(&r, 2, 2, 1, max_latency_us);
    }
    assert!(node.log_tail().lines().all(|l| !l.contains("panicked")), "{}", node.log_tail());
}
