//! `ironhub ctl`: a thin client of the management API, plus `certs` (local file generation).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::{ClusterCommand, CtlArgs, CtlCommand};

fn token(args: &CtlArgs) -> Option<String> {
    args.token
        .clone()
        .or_else(|| std::fs::read_to_string("data/admin-token").ok().map(|t| t.trim().to_string()))
}

async fn get_json(args: &CtlArgs, path: &str) -> anyhow::Result<Value> {
    send_json(args, reqwest::Method::GET, path, None).await
}

async fn send_json(
    args: &CtlArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}{}", args.api.trim_end_matches('/'), path);
    let mut req = reqwest::Client::new().request(method, &url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(t) = token(args) {
        req = req.bearer_auth(t);
    }
    let resp =
        req.send().await.with_context(|| format!("cannot reach {url}: is the node running? (--api URL)"))?;
    let status = resp.status();
    let body: Value = resp.json().await.with_context(|| format!("{url} did not answer JSON"))?;
    if !status.is_success() {
        let msg = body.pointer("/error/message").and_then(Value::as_str).unwrap_or("");
        bail!("{url}: {status}: {msg}");
    }
    Ok(body)
}

/// Runs one `ironhub ctl` command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    match &args.command {
        CtlCommand::Cluster { command: ClusterCommand::Status { json } } => {
            let v = get_json(&args, "/api/v1/cluster").await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            print_status(&v);
            Ok(())
        }
        CtlCommand::Cluster { command: ClusterCommand::AddNode { id, addr } } => {
            let body = serde_json::json!({"id": id, "addr": addr});
            let plan = send_json(&args, reqwest::Method::POST, "/api/v1/cluster/nodes", Some(body)).await?;
            follow_plan(&args, &plan).await
        }
        CtlCommand::Cluster { command: ClusterCommand::CancelPlan } => {
            let plan = send_json(&args, reqwest::Method::DELETE, "/api/v1/cluster/plan", None).await?;
            println!(
                "plan {}: {}",
                plan["id"].as_str().unwrap_or_default(),
                plan["state"].as_str().unwrap_or_default()
            );
            Ok(())
        }
        CtlCommand::Cluster { command: ClusterCommand::RemoveNode { id } } => {
            let plan =
                send_json(&args, reqwest::Method::DELETE, &format!("/api/v1/cluster/nodes/{id}"), None)
                    .await?;
            follow_plan(&args, &plan).await
        }
        CtlCommand::Certs { out, nodes } => certs(out, nodes),
    }
}

/// Prints the plan's progress until it finishes.
async fn follow_plan(args: &CtlArgs, plan: &Value) -> anyhow::Result<()> {
    let id = plan["id"].as_str().unwrap_or_default().to_string();
    println!("plan {id}: {}", plan["change"].as_str().unwrap_or_default());
    let mut last = String::new();
    loop {
        let v = get_json(args, "/api/v1/cluster").await?;
        let p = &v["plan"];
        if p["id"].as_str() == Some(id.as_str()) {
            let line = format!(
                "  {} ({}/{} groups)",
                p["state"].as_str().unwrap_or(""),
                p["groups_done"],
                p["groups_total"]
            );
            if line != last {
                println!("{line}");
                last = line;
            }
            match p["state"].as_str() {
                Some("done") => return Ok(()),
                Some(s) if s.starts_with("failed") => bail!("plan {id} {s}"),
                _ => {}
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn print_status(v: &Value) {
    let s = |p: &str| v.pointer(p).map(|x| x.to_string().trim_matches('"').to_string()).unwrap_or_default();
    println!(
        "cluster {}  (answered by node {}, healthy: {})",
        s("/cluster_id"),
        s("/node_id"),
        s("/healthy")
    );
    if let Some(nodes) = v.get("nodes").and_then(Value::as_array) {
        for n in nodes {
            println!("  node {:>3}  {}", n["id"], n["cluster_addr"].as_str().unwrap_or(""));
        }
    }
    println!(
        "{:>6} {:>7} {:>6} {:>10} {:>10}  voters / learners",
        "group", "leader", "term", "last_log", "applied"
    );
    for g in v.get("groups").and_then(Value::as_array).into_iter().flatten() {
        let f = |k: &str| if g[k].is_null() { "-".to_string() } else { g[k].to_string() };
        println!(
            "{:>6} {:>7} {:>6} {:>10} {:>10}  {} / {}",
            f("group"),
            f("leader"),
            f("term"),
            f("last_log_index"),
            f("last_applied"),
            f("voters"),
            f("learners")
        );
    }
    if let Some(p) = v.get("plan").filter(|p| !p.is_null()) {
        println!(
            "membership plan {}: {} — {} ({}/{} groups)",
            p["id"], p["change"], p["state"], p["groups_done"], p["groups_total"]
        );
    }
}

fn certs(out: &PathBuf, nodes: &str) -> anyhow::Result<()> {
    let mut list = Vec::new();
    for part in nodes.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, host) = part.split_once('=').with_context(|| format!("`{part}` is not ID=HOST"))?;
        let id: u64 = id.parse().with_context(|| format!("`{id}` is not a node id"))?;
        list.push((id, vec![host.to_string()]));
    }
    if list.is_empty() {
        bail!("--nodes lists no node");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = ironhub_raft::transport::certs::generate_cluster_certs(out, &list)
        .map_err(|e| anyhow::anyhow!("generating certificates: {e}"))?;
    for f in files {
        println!("wrote {}", f.display());
    }
    println!("start each node with --cluster-ca {0}/ca.pem --cluster-cert {0}/node-N.pem --cluster-key {0}/node-N.key", out.display());
    Ok(())
}
