//! The command line: `config print` layering and redaction, `ctl certs` + a cluster on those
//! certificates, usage errors exit 2.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn config_print_layers_file_env_and_flags_and_redacts_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hub.toml");
    std::fs::write(
        &file,
        "node_id = 3\n[listeners]\napi = \"127.0.0.1:1111\"\n[raft]\nsnapshot_every = 500\n",
    )
    .expect("write");
    let out = Command::new(bin())
        .args(["config", "print", "--config", file.to_str().expect("utf8"), "--api", "127.0.0.1:2222"])
        .args(["--peers", "3=127.0.0.1:7003,4=127.0.0.1:7004"])
        .env("IRONHUB_CLUSTER_SECRET", "a-secret-from-env")
        .env("IRONHUB_DATA_DIR", "/tmp/from-env")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("node_id = 3"), "file value: {text}");
    assert!(text.contains("api = \"127.0.0.1:2222\""), "flag beats file: {text}");
    assert!(text.contains("data_dir = \"/tmp/from-env\""), "env applies: {text}");
    assert!(text.contains("snapshot_every = 500"), "{text}");
    assert!(text.contains("<redacted>") && !text.contains("a-secret-from-env"), "secret redacted: {text}");
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let out = Command::new(bin())
        .args(["serve", "--peers", "1=127.0.0.1:7001,2=127.0.0.1:7002", "--data-dir", "/nonexistent/x"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.secret") && err.contains("ironhub ctl certs"), "{err}");
    let out = Command::new(bin())
        .args(["serve", "--node-id", "5", "--peers", "1=127.0.0.1:7001"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in --peers"));
    let out = Command::new(bin()).args(["serve", "--no-such-flag"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_on_certificates_from_ctl_certs() {
    let mut c = Cluster::new(2);
    let certs = c.dir.path().join("certs");
    let out = Command::new(bin())
        .args(["ctl", "certs", "--out", certs.to_str().expect("utf8"), "--nodes", "1=127.0.0.1,2=127.0.0.1"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let peers = c.peers.clone();
    for id in 1..=2u64 {
        let p = |f: &str| certs.join(f).display().to_string();
        let n = c.node(id);
        n.extra = vec![
            "--cluster-ca".into(),
            p("ca.pem"),
            "--cluster-cert".into(),
            p(&format!("node-{id}.pem")),
            "--cluster-key".into(),
            p(&format!("node-{id}.key")),
        ];
        // No secret: certificates are the cluster's credentials.
        n.start_without_secret(&peers);
    }
    assert!(wait_all_led(&c.nodes[0], &[1, 2], Duration::from_secs(60)).await.is_some(), "{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_requests_get_json_errors_and_change_nothing() {
    let mut c = Cluster::new(1);
    c.start_all();
    assert!(wait_healthy(&c.nodes[0], Duration::from_secs(30)).await, "{}", c.logs());
    assert!(wait_all_led(&c.nodes[0], &[1], Duration::from_secs(30)).await.is_some());
    let url = c.nodes[0].url("/api/v1/retained/a/b");
    let http = client();
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (http.put(&url).bearer_auth(TOKEN).body("{not json").header("content-type", "application/json"), 400),
        (
            http.put(&url)
                .bearer_auth(TOKEN)
                .body("{\"payload\":1}")
                .header("content-type", "application/json"),
            422,
        ),
        (http.put(&url).bearer_auth(TOKEN).json(&serde_json::json!({"payload": "x", "qos": 7})), 400),
        (
            http.put(c.nodes[0].url("/api/v1/retained/a/+"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"payload": "x"})),
            400,
        ),
        (http.put(&url).json(&serde_json::json!({"payload": "x"})), 401),
        (http.get(c.nodes[0].url("/api/v1/nope")).bearer_auth(TOKEN), 404),
        // Last: the server answers before reading the whole body and closes that connection.
        (
            http.put(&url)
                .bearer_auth(TOKEN)
                .body(vec![b'a'; 3 << 20])
                .header("content-type", "application/json"),
            413,
        ),
    ];
    for (req, want) in cases {
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.expect("a JSON error body");
        assert_eq!(status, want, "{body}");
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{body}");
    }
    let (status, _) = get(&url).await.expect("get");
    assert_eq!(status, 404, "nothing was stored");
}
