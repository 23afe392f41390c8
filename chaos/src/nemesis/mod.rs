//! The nemesis: runs the schedule against the backend and, after every step, waits until the
//! cluster is fully led again (the liveness probe).
//!
//! Each step: resolve the target (a node id, the current leader of a group from
//! `/api/v1/cluster`, or a node drawn from the run's seeded generator), inject, hold, heal, then
//! probe liveness and record [`Op::Recovered`]; then stay quiet for the step's gap. On the stop
//! signal (duration reached, Ctrl-C) the fault in progress is healed before returning. A cluster
//! that does not recover ends the schedule early (the liveness checker fails the run).
//!
//! The faults that need more than a signal or a cut — disk full, latency, clock skew, snapshot
//! lag — are in [`faults`]: what they inject, how they heal, and what they check afterwards (a
//! node that panicked, a node that did not catch up) as [`Op::Finding`]s.

mod faults;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::api::Api;
use crate::backend::{Backend, Cut, NodeEndpoints, NodeId};
use crate::history::{Kind, Op, Recorder};
use crate::schedule::{FaultKind, Step, Target};
use crate::workload::Stop;

/// The backend, shared between the run (start, shutdown) and the nemesis.
pub type SharedBackend = Arc<Mutex<Box<dyn Backend>>>;

/// Step index used for the final liveness check.
pub const FINAL: usize = usize::MAX;

/// Runs a blocking backend call off the async workers.
pub async fn with_backend<R: Send + 'static>(
    b: &SharedBackend,
    f: impl FnOnce(&mut dyn Backend) -> R + Send + 'static,
) -> R {
    let b = b.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut g = b.lock().unwrap_or_else(|p| p.into_inner());
        f(g.as_mut())
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Liveness: every node of `up` answers `/healthz` 200 and sees a leader, itself in `up`, for every
/// group. Returns the first problem found.
pub async fn probe(api: &Api, nodes: &[NodeEndpoints], up: &[NodeId]) -> Result<(), String> {
    for n in nodes.iter().filter(|n| up.contains(&n.id)) {
        if !api.healthy(&n.api).await {
            return Err(format!("node {}: /healthz is not 200", n.id));
        }
        let view = api.cluster(&n.api).await.map_err(|e| format!("node {}: {e:#}", n.id))?;
        if !view.healthy {
            return Err(format!("node {}: reports itself unhealthy", n.id));
        }
        if view.groups.is_empty() {
            return Err(format!("node {}: no raft groups", n.id));
        }
        for g in &view.groups {
            match g.leader {
                None => return Err(format!("node {}: group {} has no leader", n.id, g.group)),
                Some(l) if !up.contains(&l) => {
                    return Err(format!(
                        "node {}: group {} still led by node {l}, which is down",
                        n.id, g.group
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Probes until liveness holds or `timeout` passes; returns (ms taken, recovered, last problem).
pub async fn wait_live(
    api: &Api,
    nodes: &[NodeEndpoints],
    up: &[NodeId],
    timeout: Duration,
) -> (u64, bool, String) {
    let t0 = Instant::now();
    let mut last;
    loop {
        match probe(api, nodes, up).await {
            Ok(()) => return (t0.elapsed().as_millis() as u64, true, String::new()),
            Err(e) => last = e,
        }
        if t0.elapsed() >= timeout {
            return (t0.elapsed().as_millis() as u64, false, last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The nemesis of one run.
pub struct Nemesis {
    /// The cluster.
    pub backend: SharedBackend,
    /// Its nodes.
    pub nodes: Vec<NodeEndpoints>,
    /// API client.
    pub api: Api,
    /// The history.
    pub rec: Recorder,
    /// Seeded generator for random targets.
    pub rng: StdRng,
    /// How long a step may take to recover.
    pub recovery_timeout: Duration,
}

/// A fault in progress, so it can be healed whatever happens.
enum Active {
    Down(NodeId),
    Paused(NodeId),
    Cut,
    /// The node's data dir is full; `log_from` is its log's length at the fault.
    Disk {
        node: NodeId,
        log_from: u64,
    },
    /// The relays delay and drop this node's (or link's) packets.
    Impaired,
    /// The node runs with a skewed wall clock.
    Skewed(NodeId),
    /// The node is paused while the leaders snapshot past it.
    Lagging(faults::Lag),
}

/// What to check once the cluster is led again after a heal.
enum After {
    Nothing,
    /// The node had a full disk: no panic since `log_from`, and it is still running.
    Disk {
        node: NodeId,
        log_from: u64,
    },
    /// The node lagged: it must catch up with the leaders.
    CatchUp(faults::Lag),
}

impl Nemesis {
    /// A nemesis whose random targets come from `seed`.
    pub fn new(
        backend: SharedBackend,
        nodes: Vec<NodeEndpoints>,
        api: Api,
        rec: Recorder,
        seed: u64,
        recovery_timeout: Duration,
    ) -> Nemesis {
        Nemesis {
            backend,
            nodes,
            api,
            rec,
            rng: StdRng::seed_from_u64(seed ^ 0x6e656d65736973),
            recovery_timeout,
        }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    async fn resolve(&mut self, t: Target) -> (NodeId, String) {
        let ids = self.ids();
        match t {
            Target::Node(n) if ids.contains(&n) => (n, format!("node {n}")),
            Target::Node(n) => {
                let pick = ids[self.rng.random_range(0..ids.len())];
                (pick, format!("node {pick} (node {n} does not exist)"))
            }
            Target::Random => {
                let pick = ids[self.rng.random_range(0..ids.len())];
                (pick, format!("node {pick}"))
            }
            Target::Leader(g) => {
                for n in &self.nodes {
                    if let Ok(v) = self.api.cluster(&n.api).await {
                        if let Some(l) = v.groups.iter().find(|x| x.group == g).and_then(|x| x.leader) {
                            return (l, format!("node {l} (leader of group {g})"));
                        }
                    }
                }
                let pick = ids[self.rng.random_range(0..ids.len())];
                (pick, format!("node {pick} (group {g} had no known leader)"))
            }
        }
    }

    /// Runs the steps until done, the deadline passes, or `stop`. Returns whether every step recovered.
    pub async fn run(&mut self, steps: &[Step], deadline: Instant, stop: &Stop) -> anyhow::Result<bool> {
        for (i, step) in steps.iter().enumerate() {
            if stop.is_stopped() || Instant::now() >= deadline {
                break;
            }
            let supported = {
                let kind = step.fault;
                with_backend(&self.backend, move |b| b.supports(kind)).await
            };
            if let Err(reason) = supported {
                eprintln!("ironhub-chaos: step {}: {} skipped: {reason}", i + 1, step.fault);
                self.rec.record("nemesis", Kind::Info, Op::Skipped { step: i, reason });
                continue;
            }
            let up_after = self.ids();
            let mut after = After::Nothing;
            if step.fault == FaultKind::RollingRestart {
                if !self.rolling_restart(i, stop).await? {
                    return Ok(false);
                }
            } else {
                let (n, who) = self.resolve(step.target).await;
                let t0 = Instant::now();
                let mut active = self.inject(i, step, n, &who).await?;
                eprintln!("ironhub-chaos: step {}: {} {who} for {}s", i + 1, step.fault, step.hold_s);
                let hold = Duration::from_secs_f64(step.hold_s);
                // While the fault holds: how long until the nodes not hit lead every group among
                // themselves (guarantee: a dead leader's groups accept writes again within 3 s).
                let spared: Vec<NodeId> = self.ids().into_iter().filter(|x| *x != n).collect();
                // The failover probe means nothing when the target stays a member whose groups need
                // not all move: a bridge, latency, a node already restarted with a skewed clock, a
                // full disk (a group whose leader is there moves only when it next writes).
                if matches!(
                    step.fault,
                    FaultKind::Bridge | FaultKind::Latency | FaultKind::ClockSkew | FaultKind::DiskFull
                ) {
                    stop.sleep(hold).await;
                } else {
                    let probe = async {
                        let left = hold.saturating_sub(t0.elapsed());
                        let (_, ok, _) = wait_live(&self.api, &self.nodes, &spared, left).await;
                        (t0.elapsed().as_millis() as u64, ok)
                    };
                    let ((ms, ok), _) = tokio::join!(probe, stop.sleep(hold));
                    self.rec.record("nemesis", Kind::Info, Op::Failover { step: i, ms, within_hold: ok });
                    if ok {
                        eprintln!(
                            "ironhub-chaos: step {}: the other nodes led every group after {ms} ms",
                            i + 1
                        );
                    }
                }
                if let Active::Lagging(lag) = &mut active {
                    self.hold_until_purged(i, lag, hold, stop).await;
                }
                after = self.heal(i, active).await?;
            }
            let (ms, ok, detail) = wait_live(&self.api, &self.nodes, &up_after, self.recovery_timeout).await;
            self.rec.record(
                "nemesis",
                if ok { Kind::Ok } else { Kind::Fail },
                Op::Recovered { step: i, ms, recovered: ok, detail: detail.clone() },
            );
            if !ok {
                eprintln!(
                    "ironhub-chaos: step {}: the cluster did not recover in {:?}: {detail}",
                    i + 1,
                    self.recovery_timeout
                );
                return Ok(false);
            }
            eprintln!("ironhub-chaos: step {}: every group led again after {ms} ms", i + 1);
            self.after_recovery(i, after).await;
            if stop.sleep(Duration::from_secs_f64(step.gap_s)).await {
                break;
            }
        }
        Ok(true)
    }

    /// Records the fault, then injects it (recording first, so what the fault causes while it is
    /// being injected — a graceful stop takes a while — falls after the fault in the history).
    async fn inject(&mut self, i: usize, step: &Step, n: NodeId, who: &str) -> anyhow::Result<Active> {
        let kind = step.fault;
        if let Some(a) = self.inject_more(i, step, n, who).await? {
            return Ok(a);
        }
        let others: Vec<NodeId> = self.ids().into_iter().filter(|x| *x != n).collect();
        let (desc, nodes, cuts) = match kind {
            FaultKind::Kill => (format!("kill -9 {who}"), vec![n], Vec::new()),
            FaultKind::Restart => (format!("SIGTERM {who}"), vec![n], Vec::new()),
            FaultKind::Pause => (format!("SIGSTOP {who}"), vec![n], Vec::new()),
            FaultKind::Partition => (
                format!("partition {who} | {others:?}"),
                vec![n],
                others.iter().flat_map(|&o| [Cut { from: n, to: o }, Cut { from: o, to: n }]).collect(),
            ),
            FaultKind::OneWay => (
                format!("one-way: {who} cannot send to {others:?}"),
                vec![n],
                others.iter().map(|&o| Cut { from: n, to: o }).collect(),
            ),
            FaultKind::Bridge => {
                let cuts = match others.as_slice() {
                    [a, b, ..] => vec![Cut { from: *a, to: *b }, Cut { from: *b, to: *a }],
                    _ => Vec::new(),
                };
                (format!("bridge: {who} is the only link between {others:?}"), others.clone(), cuts)
            }
            FaultKind::RollingRestart => unreachable!("handled by rolling_restart"),
            _ => unreachable!("handled by inject_more"),
        };
        self.rec.record("nemesis", Kind::Info, Op::Fault { step: i, desc, nodes });
        Ok(match kind {
            FaultKind::Kill => {
                with_backend(&self.backend, move |b| b.kill(n)).await?;
                Active::Down(n)
            }
            FaultKind::Restart => {
                let clean = with_backend(&self.backend, move |b| b.stop(n, Duration::from_secs(15))).await?;
                if !clean {
                    let desc = format!("node {n} did not exit within 15 s of SIGTERM: killed");
                    eprintln!("ironhub-chaos: step {}: {desc}", i + 1);
                    self.rec.record("nemesis", Kind::Info, Op::Heal { step: i, desc });
                }
                Active::Down(n)
            }
            FaultKind::Pause => {
                with_backend(&self.backend, move |b| b.pause(n)).await?;
                Active::Paused(n)
            }
            _ => {
                with_backend(&self.backend, move |b| b.cut(&cuts)).await?;
                Active::Cut
            }
        })
    }

    async fn heal(&mut self, i: usize, active: Active) -> anyhow::Result<After> {
        let mut after = After::Nothing;
        let desc = match active {
            Active::Down(n) => {
                with_backend(&self.backend, move |b| b.start(n))
                    .await
                    .with_context(|| format!("restarting node {n}"))?;
                format!("started node {n}")
            }
            Active::Paused(n) => {
                with_backend(&self.backend, move |b| b.resume(n)).await?;
                format!("SIGCONT node {n}")
            }
            Active::Cut => {
                with_backend(&self.backend, |b| b.heal_network()).await?;
                "network healed".to_string()
            }
            Active::Disk { node, log_from } => {
                after = After::Disk { node, log_from };
                self.heal_disk(i, node, log_from).await?
            }
            Active::Impaired => self.heal_latency().await?,
            Active::Skewed(n) => self.heal_skew(n).await?,
            Active::Lagging(lag) => {
                let n = lag.node;
                with_backend(&self.backend, move |b| b.resume(n)).await?;
                after = After::CatchUp(lag);
                format!("SIGCONT node {n}")
            }
        };
        self.rec.record("nemesis", Kind::Info, Op::Heal { step: i, desc });
        Ok(after)
    }

    async fn rolling_restart(&mut self, i: usize, stop: &Stop) -> anyhow::Result<bool> {
        let ids = self.ids();
        self.rec.record(
            "nemesis",
            Kind::Info,
            Op::Fault {
                step: i,
                desc: "rolling restart (SIGTERM, start, wait until led, next)".into(),
                nodes: ids.clone(),
            },
        );
        eprintln!("ironhub-chaos: step {}: rolling restart", i + 1);
        for n in ids.clone() {
            if stop.is_stopped() {
                break;
            }
            with_backend(&self.backend, move |b| b.stop(n, Duration::from_secs(15))).await?;
            with_backend(&self.backend, move |b| b.start(n)).await?;
            let (_, ok, detail) = wait_live(&self.api, &self.nodes, &ids, self.recovery_timeout).await;
            if !ok {
                self.rec.record(
                    "nemesis",
                    Kind::Fail,
                    Op::Recovered { step: i, ms: 0, recovered: false, detail },
                );
                return Ok(false);
            }
        }
        self.rec.record("nemesis", Kind::Info, Op::Heal { step: i, desc: "every node restarted".into() });
        Ok(true)
    }
}
