//! Runs short p2p and fan-out scenarios against a real mosquitto on free loopback ports: over TCP,
//! over WebSocket, and split over two worker processes connecting from two source addresses.
//! Skipped (with a message) when the mosquitto binary is not installed.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A mosquitto process, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    ws_port: u16,
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
    let (port, ws_port) = (common::free_port(), common::free_port());
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {ws_port} 127.0.0.1\nprotocol websockets\nallow_anonymous true\n"
        ),
    )
    .ok()?;
    let child =
        Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let m = Mosquitto { child, port, ws_port, _dir: dir };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err()
        || TcpStream::connect(("127.0.0.1", ws_port)).is_err()
    {
        assert!(Instant::now() < until, "mosquitto did not listen on port {port} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(m)
}

#[test]
fn p2p_and_fan_out_lose_nothing_against_mosquitto() {
    let Some(m) = start_mosquitto() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let port = m.port.to_string();

    let out = dir.path().join("p2p.json");
    let r = common::run_bench(
        &["p2p", "--port", &port, "--pairs", "3", "--duration", "2", "--rate", "50", "--qos", "1"],
        &out,
    );
    common::assert_clean_run(&r, 3, 3, 1, 5_000_000);

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
        ],
        &out,
    );
    common::assert_clean_run(&r, 1, 3, 3, 5_000_000);

    // Two worker processes (publishers of one deliver to subscribers of the other), from two
    // source addresses, QoS 2, merged into one result.
    let out = dir.path().join("workers.json");
    let r = common::run_bench(
        &[
            "p2p",
            "--port",
            &port,
            "--pairs",
            "4",
            "--duration",
            "2",
            "--rate",
            "20",
            "--qos",
            "2",
            "--workers",
            "2",
            "--ifaddr",
            "127.0.0.1,127.0.0.2",
        ],
        &out,
    );
    common::assert_clean_run(&r, 4, 4, 1, 5_000_000);
    assert_eq!(common::u(&r, "workers"), 2);

    // WebSocket.
    let out = dir.path().join("ws.json");
    let ws_port = m.ws_port.to_string();
    let r = common::run_bench(
        &["p2p", "--port", &ws_port, "--transport", "ws", "--pairs", "2", "--duration", "1", "--rate", "40"],
        &out,
    );
    common::assert_clean_run(&r, 2, 2, 1, 5_000_000);
}
