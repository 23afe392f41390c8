//! `ironhub ctl`: a thin client of the management API, plus `certs` (local file generation).

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cli::{ClusterCommand, CtlArgs, CtlCommand};

fn token(args: &CtlArgs) -> Option<String> {
    args.token.clone().or_else(|| {
        std::fs::read_to_string("data/admin-token")
            .ok()
            .map(|t| t.trim().to_string())
    })
}

async fn get_json(args: &CtlArgs, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{}", args.api.trim_end_matches('/'), path);
    let mut req = reqwest::Client::new().get(&url);
    if let Some(t) = token(args) {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}: is the node running? (--api URL)"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))?;
    if !status.is_success() {
        let msg = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        bail!("{url}: {status}: {msg}");
    }
    Ok(body)
}

/// Runs one `ironhub ctl` command.
pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    match &args.command {
        CtlCommand::Cluster {
            command: ClusterCommand::Status { json },
        } => {
            let v = get_json(&args, "/api/v1/cluster").await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            print_status(&v);
            Ok(())
        }
        CtlCommand::Cluster {
            command: ClusterCommand::AddNode { .. } | ClusterCommand::RemoveNode { .. },
        } => {
            bail!("membership changes (add-node / remove-node) are not available in this build yet")
        }
        CtlCommand::Certs { out, nodes } => certs(out, nodes),
    }
}

fn print_status(v: &Value) {
    let s = |p: &str| {
        v.pointer(p)
            .map(|x| x.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    println!(
        "cluster {}  (answered by node {}, healthy: {})",
        s("/cluster_id"),
        s("/node_id"),
        s("/healthy")
    );
    if let Some(nodes) = v.get("nodes").and_then(Value::as_array) {
        for n in nodes {
            println!(
                "  node {:>3}  {}",
                n["id"],
                n["cluster_addr"].as_str().unwrap_or("")
            );
        }
    }
    println!(
        "{:>6} {:>7} {:>6} {:>10} {:>10}  voters",
        "group", "leader", "term", "last_log", "applied"
    );
    if let Some(groups) = v.get("groups").and_then(Value::as_array) {
        for g in groups {
            let opt = |k: &str| {
                if g[k].is_null() {
                    "-".to_string()
                } else {
                    g[k].to_string()
                }
            };
            println!(
                "{:>6} {:>7} {:>6} {:>10} {:>10}  {}",
                g["group"],
                opt("leader"),
                g["term"],
                opt("last_log_index"),
                opt("last_applied"),
                g["voters"]
            );
        }
    }
}

fn certs(out: &PathBuf, nodes: &str) -> anyhow::Result<()> {
    let mut list = Vec::new();
    for part in nodes.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, host) = part
            .split_once('=')
            .with_context(|| format!("`{part}` is not ID=HOST"))?;
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
