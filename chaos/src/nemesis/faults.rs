//! The faults beyond signals and cuts: disk full, latency and loss, clock skew, snapshot lag.
//!
//! - **disk-full**: the node's data dir (a tmpfs of the run) is filled to the last byte for the
//!   hold, then freed. At the heal: a node that exited is recorded (exit status, panic or not, its
//!   last error line) and started again; a node that stayed up must serve again within
//!   [`DISK_RECOVERY`] of the space coming back, else it is restarted and that is recorded. A panic
//!   in its log since the fault fails the run; so does a store that does not open again (liveness).
//! - **latency**: the relays delay (± jitter) and drop the node's (or one link's) cluster packets
//!   for the hold; the heal clears the rules and records how many packets were delayed and dropped.
//! - **clock-skew**: the node is restarted under libfaketime with its wall clock off by `skew_s`
//!   (the monotonic clock untouched), the skew is read back from the `Date` header of its API (a
//!   skew that did not take effect fails the step), and the heal restarts it with the true time.
//! - **snapshot-lag**: the node is paused; the hold lasts at least `hold_s` and then until the
//!   leaders of some group purged their log past the paused node's last entry (at most
//!   [`LAG_EXTRA`] more). After the resume and recovery the node must have applied, in every group,
//!   what the leaders had applied when it was resumed, within the recovery timeout; the snapshots
//!   it installed are counted.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use super::{wait_live, with_backend, Active, After, Nemesis};
use crate::backend::relay::Rules;
use crate::backend::NodeId;
use crate::history::{Kind, Op};
use crate::schedule::{FaultKind, Step};
use crate::workload::Stop;

/// How long a node that stayed up through a full disk may take to serve again once the space is
/// back, before it is restarted.
pub const DISK_RECOVERY: Duration = Duration::from_secs(20);
/// How much longer than `hold_s` a snapshot-lag step may wait for the leaders to purge past the node.
pub const LAG_EXTRA: Duration = Duration::from_secs(60);

/// A paused node and what it had when it was paused.
pub struct Lag {
    /// The node.
    pub node: NodeId,
    /// Its last log index per group when it was paused.
    at_pause: BTreeMap<u64, u64>,
    /// Snapshots it had installed before.
    installed_before: u64,
    /// Groups whose leader purged its log past the node's last entry during the pause.
    purged_past: Vec<u64>,
}

/// The first panic message in `text`, if any.
pub fn first_panic(text: &str) -> Option<&str> {
    text.lines().find(|l| l.contains("panicked at") || l.contains("RUST_BACKTRACE"))
}

/// The last line of `text` that reports an error (for a node that exited).
pub fn last_error(text: &str) -> Option<&str> {
    text.lines().rev().find(|l| l.contains("ERROR") || l.contains("Error:") || l.contains("error:"))
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() <= 300 {
        return s.to_string();
    }
    let mut t: String = s.chars().take(300).collect();
    t.push('…');
    t
}

impl Nemesis {
    fn log_path(&self, n: NodeId) -> Option<std::path::PathBuf> {
        let i = self.nodes.iter().position(|x| x.id == n)?;
        let logs = self.backend.lock().unwrap_or_else(|p| p.into_inner()).logs();
        logs.get(i).cloned()
    }

    fn log_len(&self, n: NodeId) -> u64 {
        self.log_path(n).and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len())
    }

    /// The node's log from byte `from` on.
    fn log_since(&self, n: NodeId, from: u64) -> String {
        let Some(p) = self.log_path(n) else { return String::new() };
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(p) {
            if f.seek(SeekFrom::Start(from)).is_ok() {
                let mut b = Vec::new();
                let _ = f.read_to_end(&mut b);
                s = String::from_utf8_lossy(&b).into_owned();
            }
        }
        s
    }

    fn finding(&self, i: usize, node: NodeId, what: String, failed: bool) {
        eprintln!(
            "ironhub-chaos: step {}: {}node {node}: {what}",
            i + 1,
            if failed { "FAILED: " } else { "" }
        );
        self.rec.record("nemesis", Kind::Info, Op::Finding { step: i, node, what, failed });
    }

    /// Injects the faults of this module (records the fault first); `None` for the others.
    pub(super) async fn inject_more(
        &mut self,
        i: usize,
        step: &Step,
        n: NodeId,
        who: &str,
    ) -> anyhow::Result<Option<Active>> {
        let fault = |desc: String, nodes: Vec<NodeId>| Op::Fault { step: i, desc, nodes };
        match step.fault {
            FaultKind::DiskFull => {
                let size = with_backend(&self.backend, move |b| b.disk_usage(n)).await.map_or(0, |u| u.1);
                self.rec.record(
                    "nemesis",
                    Kind::Info,
                    fault(format!("fill the data dir of {who} ({} MiB tmpfs)", size >> 20), vec![n]),
                );
                let log_from = self.log_len(n);
                let bytes = with_backend(&self.backend, move |b| b.fill_disk(n)).await?;
                eprintln!(
                    "ironhub-chaos: step {}: wrote {} MiB of filler: node {n}'s disk is full",
                    i + 1,
                    bytes >> 20
                );
                Ok(Some(Active::Disk { node: n, log_from }))
            }
            FaultKind::Latency => {
                let imp = step.impairment();
                let ids = self.ids();
                let mut rules = Rules::default();
                let (desc, nodes) = match step.peer.filter(|p| *p != n && ids.contains(p)) {
                    Some(p) => {
                        rules.set_link(n, p, imp);
                        (format!("latency {imp} on the link {who} <-> node {p}"), vec![n, p])
                    }
                    None => {
                        rules.set_node(n, &ids, imp);
                        (format!("latency {imp} on every cluster link of {who}"), vec![n])
                    }
                };
                self.rec.record("nemesis", Kind::Info, fault(desc, nodes));
                with_backend(&self.backend, move |b| {
                    b.relay_stats();
                    b.impair(rules)
                })
                .await?;
                Ok(Some(Active::Impaired))
            }
            FaultKind::ClockSkew => {
                let skew = step.skew();
                self.rec.record(
                    "nemesis",
                    Kind::Info,
                    fault(format!("restart {who} with its wall clock {skew:+} s off (libfaketime)"), vec![n]),
                );
                with_backend(&self.backend, move |b| -> anyhow::Result<()> {
                    b.stop(n, Duration::from_secs(15))?;
                    b.set_clock_skew(n, Some(skew))?;
                    b.start(n)
                })
                .await?;
                self.check_skew(i, n, skew).await;
                Ok(Some(Active::Skewed(n)))
            }
            FaultKind::SnapshotLag => {
                self.rec.record(
                    "nemesis",
                    Kind::Info,
                    fault(
                        format!("SIGSTOP {who} until the leaders snapshot and purge their logs past it"),
                        vec![n],
                    ),
                );
                let api = self.api.clone();
                let base = self.nodes.iter().find(|x| x.id == n).map(|x| x.api.clone()).unwrap_or_default();
                let at_pause: BTreeMap<u64, u64> = match api.cluster(&base).await {
                    Ok(v) => v.groups.iter().map(|g| (g.group, g.last_log_index.unwrap_or(0))).collect(),
                    Err(_) => BTreeMap::new(),
                };
                let installed_before = api.snapshots_installed(&base).await.unwrap_or(0);
                with_backend(&self.backend, move |b| b.pause(n)).await?;
                Ok(Some(Active::Lagging(Lag {
                    node: n,
                    at_pause,
                    installed_before,
                    purged_past: Vec::new(),
                })))
            }
            _ => Ok(None),
        }
    }

    /// Reads the node's wall clock back; a skew that did not take effect is a failed finding.
    async fn check_skew(&self, i: usize, n: NodeId, skew: i64) {
        let Some(base) = self.nodes.iter().find(|x| x.id == n).map(|x| x.api.clone()) else { return };
        let t0 = Instant::now();
        let seen = loop {
            if let Ok(t) = self.api.wall_clock(&base).await {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                break Some(t - now);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match seen {
            // The Date header has a resolution of one second and may be cached for one.
            Some(d) if (d - skew).abs() <= 3 => {
                self.finding(i, n, format!("its API's Date header reads {d:+} s from the true time"), false)
            }
            Some(d) => self.finding(
                i,
                n,
                format!("the skew did not take effect: its Date header reads {d:+} s, not {skew:+} s (a statically linked binary, or libfaketime not loaded?)"),
                true,
            ),
            None => self.finding(i, n, "its API did not answer within 30 s of the start under libfaketime".into(), true),
        }
    }

    /// Keeps the node paused past `hold` until the leaders of some group purged past it (at most
    /// [`LAG_EXTRA`] more); records which groups they were.
    pub(super) async fn hold_until_purged(&mut self, i: usize, lag: &mut Lag, hold: Duration, stop: &Stop) {
        let t0 = Instant::now();
        let others: Vec<_> = self.nodes.iter().filter(|x| x.id != lag.node).cloned().collect();
        loop {
            let mut past = Vec::new();
            for o in &others {
                let Ok(v) = self.api.cluster(&o.api).await else { continue };
                for g in v.groups.iter().filter(|g| g.role == "leader") {
                    let behind = lag.at_pause.get(&g.group).copied().unwrap_or(0);
                    if g.purged.is_some_and(|p| p > behind) {
                        past.push(g.group);
                    }
                }
            }
            past.sort_unstable();
            past.dedup();
            lag.purged_past = past;
            if !lag.purged_past.is_empty() || stop.is_stopped() || t0.elapsed() >= LAG_EXTRA {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let paused = hold + t0.elapsed();
        let what = if lag.purged_past.is_empty() {
            format!(
                "paused {:.0} s, but no leader purged its log past it (more writes, or a lower [raft] snapshot_every / keep_behind_snapshot, are needed): it catches up from the log",
                paused.as_secs_f64()
            )
        } else {
            format!(
                "paused {:.0} s; the leaders of groups {:?} purged their logs past its last entry",
                paused.as_secs_f64(),
                lag.purged_past
            )
        };
        self.finding(i, lag.node, what, false);
    }

    /// Frees the disk; starts a node that exited, restarts one that does not serve again.
    pub(super) async fn heal_disk(&mut self, i: usize, n: NodeId, log_from: u64) -> anyhow::Result<String> {
        let freed = with_backend(&self.backend, move |b| b.free_disk(n)).await?;
        let (alive, exit) = with_backend(&self.backend, move |b| (b.is_alive(n), b.exit_status(n))).await;
        let log = self.log_since(n, log_from);
        let panic = first_panic(&log).map(clip);
        if let Some(p) = &panic {
            self.finding(i, n, format!("panicked on the full disk: {p}"), true);
        }
        if !alive {
            let why = last_error(&log).map(clip).unwrap_or_else(|| "no error line in its log".into());
            self.finding(
                i,
                n,
                format!(
                    "exited while its disk was full ({}): {why}; started again after the space came back",
                    exit.unwrap_or_else(|| "status unknown".into())
                ),
                false,
            );
            with_backend(&self.backend, move |b| b.start(n)).await?;
            return Ok(format!("freed {} MiB; started node {n} again", freed >> 20));
        }
        let (ms, ok, detail) = wait_live(&self.api, &self.nodes, &self.ids(), DISK_RECOVERY).await;
        if ok {
            self.finding(
                i,
                n,
                format!("stayed up through the full disk and served again {ms} ms after the space came back, without a restart"),
                false,
            );
            return Ok(format!("freed {} MiB", freed >> 20));
        }
        self.finding(
            i,
            n,
            format!(
                "stayed up but did not serve again within {} s of the space coming back ({detail}): restarted (RocksDB stays read-only after ENOSPC?)",
                DISK_RECOVERY.as_secs()
            ),
            false,
        );
        with_backend(&self.backend, move |b| -> anyhow::Result<()> {
            b.stop(n, Duration::from_secs(15))?;
            b.start(n)
        })
        .await?;
        Ok(format!("freed {} MiB; restarted node {n}", freed >> 20))
    }

    /// Clears the relays' rules; says how many packets the fault delayed and dropped.
    pub(super) async fn heal_latency(&mut self) -> anyhow::Result<String> {
        let stats = with_backend(&self.backend, |b| -> anyhow::Result<_> {
            let s = b.relay_stats();
            b.impair(Rules::default())?;
            Ok(s)
        })
        .await?;
        Ok(match stats {
            Some(s) => format!(
                "latency cleared (during the fault the relays delayed {} packets, dropped {}, passed {} on at once)",
                s.delayed, s.dropped, s.forwarded
            ),
            None => "latency cleared".into(),
        })
    }

    /// Restarts the node with the true time.
    pub(super) async fn heal_skew(&mut self, n: NodeId) -> anyhow::Result<String> {
        with_backend(&self.backend, move |b| -> anyhow::Result<()> {
            b.stop(n, Duration::from_secs(15))?;
            b.set_clock_skew(n, None)?;
            b.start(n)
        })
        .await?;
        Ok(format!("restarted node {n} with the true time"))
    }

    /// Checks what a fault leaves to check once the cluster is led again.
    pub(super) async fn after_recovery(&mut self, i: usize, after: After) {
        match after {
            After::Nothing => {}
            After::Disk { node, log_from } => {
                // A panic after the heal (a store that does not reopen, a crash on the first write).
                let log = self.log_since(node, log_from);
                if let Some(p) = first_panic(&log) {
                    let p = clip(p);
                    self.finding(i, node, format!("panicked after the disk-full fault: {p}"), true);
                }
                if !with_backend(&self.backend, move |b| b.is_alive(node)).await {
                    self.finding(i, node, "is not running after the disk-full fault was healed".into(), true);
                }
            }
            After::CatchUp(lag) => self.catch_up(i, lag).await,
        }
    }

    /// Waits until the lagging node applied, in every group, what the leaders had applied now.
    async fn catch_up(&mut self, i: usize, lag: Lag) {
        let n = lag.node;
        let t0 = Instant::now();
        // The leaders' applied index per group, now.
        let mut target: BTreeMap<u64, u64> = BTreeMap::new();
        for o in self.nodes.iter().filter(|x| x.id != n) {
            if let Ok(v) = self.api.cluster(&o.api).await {
                for g in v.groups.iter().filter(|g| g.role == "leader") {
                    target.insert(g.group, g.last_applied.unwrap_or(0));
                }
            }
        }
        let Some(base) = self.nodes.iter().find(|x| x.id == n).map(|x| x.api.clone()) else { return };
        let mut behind: Vec<u64> = target.keys().copied().collect();
        while t0.elapsed() < self.recovery_timeout {
            if let Ok(v) = self.api.cluster(&base).await {
                let applied: BTreeMap<u64, u64> =
                    v.groups.iter().map(|g| (g.group, g.last_applied.unwrap_or(0))).collect();
                behind = target
                    .iter()
                    .filter(|(g, t)| applied.get(g).is_none_or(|a| a < t))
                    .map(|(g, _)| *g)
                    .collect();
                if behind.is_empty() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let installed = self.api.snapshots_installed(&base).await.unwrap_or(lag.installed_before);
        let snaps = installed.saturating_sub(lag.installed_before);
        if behind.is_empty() {
            self.finding(
                i,
                n,
                format!(
                    "caught up in every group {} ms after the cluster was led again, installing {snaps} snapshots ({} groups had been purged past it)",
                    t0.elapsed().as_millis(),
                    lag.purged_past.len()
                ),
                false,
            );
        } else {
            self.finding(
                i,
                n,
                format!(
                    "did not catch up within {:?}: groups {behind:?} still behind the leaders' applied index ({snaps} snapshots installed)",
                    self.recovery_timeout
                ),
                true,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_and_errors_are_found_in_a_log() {
        let log = "INFO start\nthread 'tokio-runtime-worker' panicked at storage/src/rocks.rs:9:5:\nERROR x\nError: no space left\n";
        assert!(first_panic(log).unwrap().contains("rocks.rs"));
        assert_eq!(last_error(log), Some("Error: no space left"));
        assert_eq!(first_panic("INFO fine\n"), None);
        assert_eq!(clip(&"x".repeat(400)).chars().count(), 301);
    }
}
