//! Runs split over worker processes: the coordinator, the worker side, and the lines between them.
//!
//! Workers are this same binary started again with the same arguments plus the hidden
//! `--worker K/N --run-tag TAG --topic-prefix PREFIX` (and the broker's `--host/--port`, which
//! `compare` sets per broker). Each computes the same plan, takes its [`crate::share::Share`], and
//! keeps step with the coordinator by lines on stdin/stdout ([`crate::runner::protocol`]): all
//! ready → start; all published → the sent counts of everyone (so each worker knows how many
//! deliveries to wait for) → reports. The coordinator reads the broker's RSS while every client of
//! every worker is connected, and merges the reports ([`crate::share::merge`]).

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::cli::CommonArgs;
use crate::procstat;
use crate::runner::{self, Job, RunError, Sync};
use crate::scenario::Plan;
use crate::share::{self, Report};

/// Lines a worker and its coordinator exchange (worker stdout → coordinator, coordinator →
/// worker stdin), in this order.
pub mod protocol {
    /// Worker: every client of its share is connected (and subscribed).
    pub const READY: &str = "IHB-READY";
    /// Coordinator: every worker is ready; publish now.
    pub const START: &str = "IHB-START";
    /// Worker: its publishers stopped; JSON of messages sent per publisher id follows.
    pub const PUBLISHED: &str = "IHB-PUBLISHED ";
    /// Coordinator: JSON of messages sent per publisher id, over all workers.
    pub const SENT: &str = "IHB-SENT ";
    /// Worker: its [`crate::share::Report`] as JSON; the worker then exits.
    pub const REPORT: &str = "IHB-REPORT ";
}

/// Runs as worker `K/N` of a coordinated run: connects its share, keeps step over stdin/stdout,
/// prints its report.
pub async fn run_worker(common: &CommonArgs, plan_of: impl Fn(&str) -> Plan) -> Result<(), RunError> {
    let spec = common.worker.as_deref().unwrap_or("0/1");
    let (k, n) = spec
        .split_once('/')
        .and_then(|(k, n)| Some((k.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .filter(|(k, n)| k < n)
        .ok_or_else(|| RunError::Worker(format!("--worker {spec}: expected K/N with K < N")))?;
    let tag = common.run_tag.clone().ok_or_else(|| RunError::Worker("--run-tag missing".into()))?;
    let prefix = common.topic_prefix.clone().unwrap_or_else(|| format!("ironhub-bench/{tag}"));
    let plan = plan_of(&prefix);
    let share = share::split(&plan, &common.ifaddr, n).swap_remove(k);
    // --connect-rate is the run's: each of the n workers paces its share at 1/n of it.
    let mut common = common.clone();
    common.connect_rate /= n as f64;
    let job = Job { common, plan, share, run_tag: tag };
    let report = runner::run_share(&job, &mut Sync::worker()).await?;
    let json = serde_json::to_string(&report).map_err(|e| RunError::Worker(e.to_string()))?;
    println!("{}{json}", protocol::REPORT);
    Ok(())
}

/// One worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
}

fn err(e: impl std::fmt::Display) -> RunError {
    RunError::Worker(e.to_string())
}

/// Starts `n` workers, runs the barriers, returns the merged report and the broker RSS (KiB)
/// read while every client was connected.
pub async fn coordinate(
    common: &CommonArgs,
    tag: &str,
    prefix: &str,
    n: usize,
) -> Result<(Report, Vec<Option<u64>>), RunError> {
    let exe = std::env::current_exe().map_err(|e| err(format!("cannot find this binary: {e}")))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let (tx, mut rx) = mpsc::channel::<(usize, Option<String>)>(64);
    let mut workers = Vec::with_capacity(n);
    for k in 0..n {
        let mut child = Command::new(&exe)
            .args(&args)
            .args(["--worker", &format!("{k}/{n}"), "--run-tag", tag, "--topic-prefix", prefix])
            .args(["--host", &common.host, "--port", &common.port.to_string(), "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(format!("cannot start worker {k}: {e}")))?;
        let stdin = child.stdin.take().ok_or_else(|| err("no worker stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| err("no worker stdout"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send((k, Some(l))).await.is_err() {
                    return;
                }
            }
            let _ = tx.send((k, None)).await;
        });
        workers.push(Worker { child, stdin });
    }
    drop(tx);

    // Waits until every worker sent a line starting with `prefix`; returns the rest of each.
    async fn gather(
        rx: &mut mpsc::Receiver<(usize, Option<String>)>,
        n: usize,
        prefix: &str,
    ) -> Result<Vec<String>, RunError> {
        let mut got: Vec<Option<String>> = vec![None; n];
        while got.iter().any(Option::is_none) {
            match rx.recv().await {
                Some((k, Some(l))) => match l.strip_prefix(prefix) {
                    Some(rest) => got[k] = Some(rest.to_string()),
                    None => eprintln!("worker {k}: {l}"),
                },
                // The end of a worker's output after its line is its normal exit (after REPORT).
                Some((k, None)) if got[k].is_none() => {
                    return Err(err(format!("worker {k} exited before {}", prefix.trim())))
                }
                Some((_, None)) => {}
                None => return Err(err("workers went away")),
            }
        }
        Ok(got.into_iter().flatten().collect())
    }
    async fn tell(workers: &mut [Worker], line: &str) -> Result<(), RunError> {
        for w in workers.iter_mut() {
            w.stdin.write_all(format!("{line}\n").as_bytes()).await.map_err(err)?;
            w.stdin.flush().await.map_err(err)?;
        }
        Ok(())
    }

    gather(&mut rx, n, protocol::READY).await?;
    let rss: Vec<Option<u64>> = common.broker_pids.iter().map(|p| procstat::rss_kib(*p)).collect();
    eprintln!("all {n} workers connected; publishing");
    tell(&mut workers, protocol::START).await?;

    let mut sent: BTreeMap<u32, u64> = BTreeMap::new();
    for json in gather(&mut rx, n, protocol::PUBLISHED).await? {
        let part: BTreeMap<u32, u64> = serde_json::from_str(&json).map_err(err)?;
        sent.extend(part);
    }
    let all = serde_json::to_string(&sent).map_err(err)?;
    tell(&mut workers, &format!("{}{all}", protocol::SENT)).await?;

    let mut reports = Vec::with_capacity(n);
    for json in gather(&mut rx, n, protocol::REPORT).await? {
        reports.push(serde_json::from_str::<Report>(&json).map_err(err)?);
    }
    for (k, w) in workers.iter_mut().enumerate() {
        let status = w.child.wait().await.map_err(err)?;
        if !status.success() {
            return Err(err(format!("worker {k} exited with {status}")));
        }
    }
    Ok((share::merge(reports), rss))
}
