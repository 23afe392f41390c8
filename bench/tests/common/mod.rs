//! Helpers shared by the integration tests: run the bench binary, check a result file.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Runs `ironhub-bench ARGS --out OUT --quiet`, asserts success and returns the JSON result.
pub fn run_bench(args: &[&str], out: &Path) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_ironhub-bench"))
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .output()
        .expect("run ironhub-bench");
    assert!(
        output.status.success(),
        "ironhub-bench {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(out).expect("result file");
    serde_json::from_str(&text).expect("result JSON")
}

/// An unsigned field of a result.
pub fn u(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Checks a QoS 1 run: every message acknowledged and received exactly once, in order, no
/// errors, every client connected, and latency figures that make sense (at most `max_latency_us`).
pub fn assert_clean_run(
    r: &serde_json::Value,
    publishers: u64,
    subscribers: u64,
    receivers_per_msg: u64,
    max_latency_us: u64,
) {
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
    assert!(max < max_latency_us, "latency above {max_latency_us} µs on loopback: {lat}");
    assert!(r["out_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(!r["timeline"].as_array().map(Vec::is_empty).unwrap_or(true), "timeline recorded");
}
