//! Runs short p2p and fan-out scenarios against a real mosquitto on a free loopback port.
//! Skipped (with a message) when the mosquitto binary is not installed.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A mosquitto process, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

fn start_mosquitto() -> Option<Mosquitto> {
    let Some(bin) = find_mosquitto() else {
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install -y mosquitto)");
        return None;
    };
    let dir = tempfile::tempdir().ok()?;
    let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\n")).ok()?;
    let child =
        Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let m = Mosquitto { child, port, _dir: dir };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "mosquitto did not listen on port {port} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(m)
}

fn run_bench(args: &[&str], out: &Path) -> serde_json::Value {
    let status = Command::new(env!("CARGO_BIN_EXE_ironhub-bench"))
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .status()
        .expect("run ironhub-bench");
    assert!(status.success(), "ironhub-bench {args:?} failed: {status}");
    let text = std::fs::read_to_string(out).expect("result file");
    serde_json::from_str(&text).expect("result JSON")
}

fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn assert_clean_run(r: &serde_json::Value, publishers: u64, subscribers: u64, receivers_per_msg: u64) {
    let sent = u(r, "sent");
    assert!(sent >= publishers * 20, "too few messages sent: {sent}");
    assert_eq!(u(r, "acked"), sent, "every QoS 1 publish acknowledged");
    assert_eq!(u(r, "expected"), sent * receivers_per_msg);
    assert_eq!(u(r, "received"), u(r, "expected"), "every message received");
    assert_eq!((u(r, "lost"), u(r, "duplicated"), u(r, "out_of_order")), (0, 0, 0));
    assert_eq!(u(r, "connected"), publishers + subscribers);
    assert_eq!(r["errors"].as_object().map(|e| e.len()), Some(0), "errors: {}", r["errors"]);
    let lat = &r["latency"];
    assert_eq!(u(lat, "count"), u(r, "received"));
    let (p50, p99, max) = (u(lat, "p50_us"), u(lat, "p99_us"), u(lat, "max_us"));
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "latency order: {lat}");
    assert!(max < 5_000_000, "latency above 5 s on loopback: {lat}");
    assert!(r["out_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(!r["timeline"].as_array().map(Vec::is_empty).unwrap_or(true), "timeline recorded");
}

#[test]
fn p2p_and_fan_out_lose_nothing_against_mosquitto() {
    let Some(m) = start_mosquitto() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = m.port.to_string();

    let out = dir.path().join("p2p.json");
    let r = run_bench(
        &["p2p", "--port", &port, "--pairs", "3", "--duration", "2", "--rate", "50", "--qos", "1"],
        &out,
    );
    assert_clean_run(&r, 3, 3, 1);

    let out = dir.path().join("fanout.json");
    let r = run_bench(
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
        ],
        &out,
    );
    assert_clean_run(&r, 1, 3, 3);
}
