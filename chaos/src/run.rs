//! One run: resolve the settings, start the cluster, run workloads and the nemesis, heal, drain,
//! check, report. Everything started here is stopped here; the cluster processes die with the
//! backend (also on an error or panic, by `Drop`), and Ctrl-C ends the fault phase early.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::api::Api;
use crate::backend::netns::NetnsBackend;
use crate::backend::process::faketime_lib;
use crate::backend::process::ProcessBackend;
use crate::backend::relay::Rules;
use crate::backend::{disk, Backend, ClusterOptions, NodeEndpoints};
use crate::check::{self, Verdict};
use crate::cli::{BackendKind, RunArgs, WorkloadKind};
use crate::history::{self, Kind, Op, Recorder};
use crate::nemesis::{self, Nemesis, SharedBackend, FINAL};
use crate::report::{self, Results};
use crate::scenario::{ClusterSection, Scenario, ScheduleMode, Workload};
use crate::schedule::{self, FaultKind, Step};
use crate::workload::queue::{self, Progress, QueueConfig};
use crate::workload::{metrics, retained, Stop};

/// A usage error: exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

fn usage<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(Usage(msg.into()).into())
}

/// Nodes in the cluster under test.
pub const NODES: u64 = 3;
/// Partition groups of a default cluster (targets `leader:G` are drawn from 0..=this).
pub const PARTITIONS: u64 = 16;

/// The settings of a run after the scenario and the flags are merged.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenario name.
    pub name: String,
    /// Scenario file, if any.
    pub scenario: Option<PathBuf>,
    /// Seed.
    pub seed: u64,
    /// Schedule mode.
    pub mode: ScheduleMode,
    /// Fault kinds (fixed and random schedules).
    pub kinds: Vec<FaultKind>,
    /// Fault phase (s).
    pub duration_s: f64,
    /// Backend.
    pub backend: BackendKind,
    /// Workload.
    pub workload: Workload,
    /// The steps.
    pub steps: Vec<Step>,
    /// Recovery timeout.
    pub recovery_timeout: Duration,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// Node set-up (tmpfs data dirs, relays, snapshot settings).
    pub cluster: ClusterOptions,
}

/// Kinds the backend can inject here, the default of `--faults`: network cuts need netns, latency
/// needs the process backend's relays, disk full needs root (tmpfs), clock skew libfaketime.
fn backend_kinds(b: BackendKind) -> Vec<FaultKind> {
    FaultKind::ALL
        .into_iter()
        .filter(|k| match k {
            k if k.is_network() => b == BackendKind::Netns,
            FaultKind::Latency => b == BackendKind::Process,
            FaultKind::DiskFull => disk::is_root(),
            FaultKind::ClockSkew => faketime_lib().is_some(),
            _ => true,
        })
        .collect()
}

/// Tmpfs size (MiB) when a schedule has disk-full steps and the scenario names none.
pub const DEFAULT_DISK_MB: u64 = 64;
/// `[raft] snapshot_every` / `keep_behind_snapshot` when a schedule has snapshot-lag steps: small
/// enough that a few seconds of the default workload make the leaders snapshot and purge.
pub const LAG_SNAPSHOT: (u64, u64) = (100, 20);

/// The node set-up a schedule needs: only the faults in it change how the nodes start, so runs
/// without them start the nodes exactly as before. The scenario's `[cluster]` keys win.
pub fn cluster_options(steps: &[Step], backend: BackendKind, c: &ClusterSection) -> ClusterOptions {
    let has = |k: FaultKind| steps.iter().any(|s| s.fault == k);
    let lag = has(FaultKind::SnapshotLag);
    ClusterOptions {
        disk_mb: c.disk_mb.or(has(FaultKind::DiskFull).then_some(DEFAULT_DISK_MB)),
        relays: backend == BackendKind::Process && c.relays.unwrap_or(has(FaultKind::Latency)),
        snapshot_every: c.snapshot_every.or(lag.then_some(LAG_SNAPSHOT.0)),
        keep_behind_snapshot: c.keep_behind_snapshot.or(lag.then_some(LAG_SNAPSHOT.1)),
    }
}

/// Merges the scenario and the flags; errors are [`Usage`].
pub fn plan(a: &RunArgs) -> anyhow::Result<Plan> {
    let sc = match &a.scenario {
        Some(p) => Some(Scenario::load(p).map_err(|e| Usage(format!("{e:#}")))?),
        None => None,
    };
    let seed =
        a.seed.or(sc.as_ref().and_then(|s| s.seed)).unwrap_or_else(|| u64::from(rand::random::<u32>()));
    let mode = match (a.schedule, &sc) {
        (Some(m), _) => m,
        (None, Some(s)) => s.mode(),
        (None, None) if a.seed.is_some() => ScheduleMode::Random,
        (None, None) => ScheduleMode::Fixed,
    };
    let kinds = a
        .faults
        .clone()
        .or(sc.as_ref().and_then(|s| s.faults.clone()))
        .unwrap_or_else(|| backend_kinds(a.backend));
    if kinds.is_empty() {
        return usage("--faults: name at least one fault");
    }
    let duration_s = a.duration.or(sc.as_ref().map(|s| s.duration_s)).unwrap_or(120.0);
    if !(duration_s > 0.0 && duration_s <= 7.0 * 86_400.0) {
        return usage(format!("--duration {duration_s}: use a number of seconds in (0, 604800]"));
    }
    let mut workload = sc.as_ref().map(|s| s.workload.clone()).unwrap_or_default();
    if let Some(w) = &a.workloads {
        workload.queue = w.contains(&WorkloadKind::Queue);
        workload.retained = w.contains(&WorkloadKind::Retained);
    }
    if let Some(v) = a.publishers {
        workload.publishers = v;
    }
    if let Some(v) = a.subscribers {
        workload.subscribers = v;
    }
    if let Some(v) = a.rate {
        workload.rate = v;
    }
    if let Some(v) = a.qos {
        workload.qos = v;
    }
    workload.validate().map_err(|e| Usage(format!("{e:#}")))?;
    for t in [a.recovery_timeout, a.drain_timeout] {
        if !(t > 0.0 && t <= 3600.0) {
            return usage("--recovery-timeout and --drain-timeout must be in (0, 3600] seconds");
        }
    }
    let steps = match mode {
        ScheduleMode::Steps => match &sc {
            Some(s) if !s.steps.is_empty() => s.steps.clone(),
            _ => return usage("--schedule steps needs a --scenario with [[step]] entries"),
        },
        ScheduleMode::Fixed => schedule::fixed(&kinds, duration_s),
        ScheduleMode::Random => schedule::random(seed, &kinds, duration_s, NODES, PARTITIONS),
    };
    if steps.is_empty() {
        return usage("the schedule is empty: the fixed rotation has none of the given --faults");
    }
    let name = sc.as_ref().map_or_else(|| format!("{mode:?}").to_lowercase(), |s| s.name.clone());
    let cluster =
        cluster_options(&steps, a.backend, &sc.as_ref().map(|s| s.cluster.clone()).unwrap_or_default());
    Ok(Plan {
        name,
        scenario: a.scenario.clone(),
        seed,
        mode,
        kinds,
        duration_s,
        backend: a.backend,
        workload,
        steps,
        recovery_timeout: Duration::from_secs_f64(a.recovery_timeout),
        drain_timeout: Duration::from_secs_f64(a.drain_timeout),
        cluster,
    })
}

/// The command line that replays a plan.
pub fn replay_command(p: &Plan, bin: &Path) -> String {
    let mut c = format!("ironhub-chaos run --backend {} --seed {}", p.backend.name(), p.seed);
    if let Some(s) = &p.scenario {
        c += &format!(" --scenario {}", s.display());
    }
    let kinds: Vec<&str> = p.kinds.iter().map(|k| k.name()).collect();
    let mut w = Vec::new();
    if p.workload.queue {
        w.push("queue");
    }
    if p.workload.retained {
        w.push("retained");
    }
    c += &format!(
        " --schedule {} --faults {} --duration {} --workloads {} --publishers {} --subscribers {} --rate {} --qos {} --bin {}",
        format!("{:?}", p.mode).to_lowercase(),
        kinds.join(","),
        p.duration_s,
        w.join(","),
        p.workload.publishers,
        p.workload.subscribers,
        p.workload.rate,
        p.workload.qos,
        bin.display()
    );
    c
}

/// The binary to test: flag, $IRONHUB_BIN, $CARGO_TARGET_DIR/release/ironhub, the shared cache.
pub fn find_bin(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("IRONHUB_BIN") {
        return PathBuf::from(p);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = PathBuf::from(t).join("release/ironhub");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("/var/cache/ironhub/target/release/ironhub")
}

/// Kills the cluster when dropped (error, panic): the backend's own `Drop` does the work, this
/// makes sure the last reference goes at a known point.
struct ClusterGuard(SharedBackend);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).shutdown();
    }
}

/// Probes the MQTT listener of a node: a clean-session CONNECT answered by CONNACK.
async fn mqtt_serves(n: &NodeEndpoints) -> Result<(), String> {
    let session = ironhub_client::Session::new(1);
    let (c, _events) = queue::connect("chaos-probe", n, true, &session).await?;
    c.try_disconnect();
    Ok(())
}

/// Runs a plan; returns whether every checker passed. Errors before the history exists are
/// returned; afterwards the report is always written.
pub async fn run(p: Plan, bin: PathBuf, out: PathBuf) -> anyhow::Result<bool> {
    let t_start = Instant::now();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let replay = replay_command(&p, &bin);
    println!(
        "ironhub-chaos: {} on the {} backend, seed {}, output in {}",
        p.name,
        p.backend.name(),
        p.seed,
        out.display()
    );
    println!("ironhub-chaos: replay with: {replay}");
    for (i, s) in p.steps.iter().enumerate() {
        println!("  step {:>2}: {s}", i + 1);
    }
    if p.cluster != ClusterOptions::default() {
        println!("ironhub-chaos: node set-up for these faults: {:?}", p.cluster);
    }
    let backend: Box<dyn Backend> = match p.backend {
        BackendKind::Process => Box::new(
            ProcessBackend::new(&bin, &out, NODES, p.cluster.clone()).map_err(|e| Usage(format!("{e:#}")))?,
        ),
        BackendKind::Netns => Box::new(
            NetnsBackend::new(&bin, &out, NODES, p.cluster.clone()).map_err(|e| Usage(format!("{e:#}")))?,
        ),
    };
    let shared: SharedBackend = Arc::new(Mutex::new(backend));
    let guard = ClusterGuard(shared.clone());
    let (nodes, token, backend_name) = {
        let b = shared.lock().unwrap_or_else(|e| e.into_inner());
        (b.nodes(), b.admin_token(), b.name())
    };
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    let api = Api::new(&token, Duration::from_secs(3))?;
    for id in ids.clone() {
        nemesis::with_backend(&shared, move |b| b.start(id)).await?;
    }
    let (ms, up, detail) = nemesis::wait_live(&api, &nodes, &ids, Duration::from_secs(60)).await;
    if !up {
        bail!("the cluster did not come up in 60 s ({detail}); node logs are in {}/logs", out.display());
    }
    println!("ironhub-chaos: cluster up and fully led after {ms} ms");
    if p.workload.queue {
        if let Err(e) = mqtt_serves(&nodes[0]).await {
            return usage(format!(
                "the queue workload needs MQTT, but {} does not serve it on {}:{} ({e}); use an ironhub build \
                 with the MQTT listener, or run without it: --workloads retained",
                bin.display(),
                nodes[0].mqtt_host,
                nodes[0].mqtt_port
            ));
        }
    }

    let rec = Recorder::new();
    let fault_stop = Stop::new();
    let write_stop = Stop::new();
    let drain_stop = Stop::new();
    let mut tasks = tokio::task::JoinSet::new();
    {
        let s = fault_stop.clone();
        tasks.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("ironhub-chaos: interrupted: healing, then checking what was recorded");
                s.stop();
            }
        });
    }
    let progress = Progress::new(p.workload.subscribers);
    let qcfg = QueueConfig {
        publishers: p.workload.publishers,
        subscribers: p.workload.subscribers,
        rate: p.workload.rate,
        qos: p.workload.qos,
        window: p.workload.window,
        roam: Duration::from_secs(15),
    };
    let mut subs = tokio::task::JoinSet::new();
    let mut writers = tokio::task::JoinSet::new();
    if p.workload.queue {
        for j in 0..qcfg.subscribers {
            subs.spawn(queue::subscriber(
                j,
                qcfg.clone(),
                nodes.clone(),
                progress.clone(),
                rec.clone(),
                drain_stop.clone(),
            ));
        }
        let t0 = Instant::now();
        while !progress.all_subscribed() {
            if t0.elapsed() > Duration::from_secs(30) {
                drain_stop.stop();
                bail!(
                    "subscribers did not get their SUBACK within 30 s; node logs are in {}/logs",
                    out.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 0..qcfg.publishers {
            writers.spawn(queue::publisher(
                i,
                qcfg.clone(),
                nodes.clone(),
                progress.clone(),
                rec.clone(),
                write_stop.clone(),
            ));
        }
    }
    if p.workload.retained {
        let a = Api::new(&token, Duration::from_secs(2))?;
        writers.spawn(retained::run(
            a,
            nodes.clone(),
            p.workload.retained_keys,
            p.workload.retained_rate,
            rec.clone(),
            write_stop.clone(),
        ));
    }
    writers.spawn(metrics::run(api.clone(), nodes.clone(), rec.clone(), write_stop.clone()));

    // Warm up, then the fault phase.
    fault_stop.sleep(Duration::from_secs(3)).await;
    let mut nem =
        Nemesis::new(shared.clone(), nodes.clone(), api.clone(), rec.clone(), p.seed, p.recovery_timeout);
    let deadline = Instant::now() + Duration::from_secs_f64(p.duration_s);
    let nem_result = nem.run(&p.steps, deadline, &fault_stop).await;
    if let Err(e) = &nem_result {
        eprintln!("ironhub-chaos: the nemesis stopped: {e:#}");
        // Heal whatever may be left: resume and start every node, reconnect the network, clear
        // the relays, free the disks (a node left with a skewed clock keeps it until the end).
        let _ = nemesis::with_backend(&shared, |b| {
            let _ = b.heal_network();
            let _ = b.impair(Rules::default());
            for n in b.nodes() {
                let _ = b.free_disk(n.id);
                let _ = b.set_clock_skew(n.id, None);
                if !b.is_alive(n.id) {
                    let _ = b.start(n.id);
                } else {
                    let _ = b.resume(n.id);
                }
            }
        })
        .await;
    }
    let (ms, ok, detail) = nemesis::wait_live(&api, &nodes, &ids, p.recovery_timeout).await;
    rec.record(
        "nemesis",
        if ok { Kind::Ok } else { Kind::Fail },
        Op::Recovered { step: FINAL, ms, recovered: ok, detail },
    );
    // Quiet writes for a few seconds after the last fault, then stop writers and drain.
    write_stop.sleep(Duration::from_secs(3)).await;
    write_stop.stop();
    while writers.join_next().await.is_some() {}
    if p.workload.queue {
        let t0 = Instant::now();
        while !progress.drained() && t0.elapsed() < p.drain_timeout {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "ironhub-chaos: drain took {} ms{}",
            t0.elapsed().as_millis(),
            if progress.drained() { "" } else { " (timed out)" }
        );
    }
    drain_stop.stop();
    while subs.join_next().await.is_some() {}
    if p.workload.retained {
        retained::final_reads(&api, &nodes, p.workload.retained_keys, &rec).await;
    }
    let mut last = std::collections::HashMap::new();
    metrics::sample(&api, &nodes, &rec, &mut last).await;
    fault_stop.stop();
    tasks.abort_all();
    let logs: Vec<String> = shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .logs()
        .iter()
        .map(|l| l.display().to_string())
        .collect();
    drop(guard);

    let events = rec.snapshot();
    history::write_jsonl(&out.join("history.jsonl"), &events)?;
    let checks: Vec<_> = check::for_workloads(p.workload.queue, p.workload.qos, p.workload.retained)
        .iter()
        .map(|c| c.check(&events))
        .collect();
    let mut pass = checks.iter().all(|c| c.verdict == Verdict::Pass);
    if let Err(e) = nem_result {
        pass = false;
        eprintln!("ironhub-chaos: the run is a failure because the nemesis failed: {e:#}");
    }
    let results = Results {
        scenario: p.name.clone(),
        backend: backend_name.into(),
        seed: p.seed,
        replay: replay.clone(),
        wall_s: t_start.elapsed().as_secs_f64(),
        verdict: if pass { Verdict::Pass } else { Verdict::Fail },
        checks,
        schedule: p.steps.iter().map(|s| s.to_string()).collect(),
        logs,
    };
    report::write_results(&out.join("results.json"), &results)?;
    report::write_html(&out.join("report.html"), &results, &events)?;
    report::print_summary(&results);
    println!(
        "ironhub-chaos: history {0}/history.jsonl, results {0}/results.json, report {0}/report.html",
        out.display()
    );
    if !pass {
        println!("ironhub-chaos: FAILED; replay with: {replay}");
    }
    Ok(pass)
}
