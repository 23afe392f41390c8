//! Fault schedules: what the nemesis does, to whom, for how long.
//!
//! A schedule is a list of [`Step`]s run one after the other: inject the fault, hold it for
//! `hold_s`, heal it (restart, resume, reconnect the network), wait until the cluster is fully led
//! again (the liveness check), then stay quiet for `gap_s`. It comes from a scenario file, from the
//! built-in fixed rotation, or from a seed: [`random`] is a pure function of its inputs, so the same
//! seed gives the same schedule.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` the node, restart it after `hold_s`.
    Kill,
    /// SIGTERM, wait for a clean exit, start again after `hold_s`.
    Restart,
    /// SIGSTOP for `hold_s`, then SIGCONT.
    Pause,
    /// Cut the node off from the other two (it is the minority, they the majority), both ways.
    Partition,
    /// Cut the two nodes other than the target from each other: the target bridges them.
    Bridge,
    /// The node's outgoing cluster traffic is dropped; it still receives.
    OneWay,
    /// Graceful restart of every node, one after the other, each waited to be led again.
    RollingRestart,
    /// The node's data dir (a small tmpfs) is filled to the last byte for `hold_s`, then freed.
    DiskFull,
    /// Delay (± jitter) and loss on the node's cluster traffic (or one link), through the UDP
    /// relays in front of every node's cluster port.
    Latency,
    /// The node is restarted with its wall clock `skew_s` off (libfaketime), and restarted with
    /// the true time at the heal.
    ClockSkew,
    /// Under sustained writes the node is paused until the leaders snapshot and purge their logs
    /// past it, then resumed: it must catch up by installing snapshots.
    SnapshotLag,
}

impl FaultKind {
    /// Every kind, in the order `--faults` documents them.
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Kill,
        FaultKind::Restart,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::RollingRestart,
        FaultKind::DiskFull,
        FaultKind::Latency,
        FaultKind::ClockSkew,
        FaultKind::SnapshotLag,
    ];

    /// The name used in scenario files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Restart => "restart",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Bridge => "bridge",
            FaultKind::OneWay => "one-way",
            FaultKind::RollingRestart => "rolling-restart",
            FaultKind::DiskFull => "disk-full",
            FaultKind::Latency => "latency",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::SnapshotLag => "snapshot-lag",
        }
    }

    /// Whether the fault is a network fault (needs a backend that controls the network).
    pub fn is_network(self) -> bool {
        matches!(self, FaultKind::Partition | FaultKind::Bridge | FaultKind::OneWay)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown fault `{s}` (expected one of: {})", names.join(", "))
        })
    }
}

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A node chosen by the run's seeded generator when the step runs.
    Random,
    /// The current leader of a raft group (0 = meta), read from `/api/v1/cluster`.
    Leader(u64),
    /// A fixed node id.
    Node(u64),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Random => f.write_str("random"),
            Target::Leader(g) => write!(f, "leader:{g}"),
            Target::Node(n) => write!(f, "node:{n}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad target `{s}` (expected `random`, `leader:GROUP` or `node:ID`)");
        if s == "random" {
            return Ok(Target::Random);
        }
        let (k, v) = s.split_once(':').ok_or_else(bad)?;
        let n: u64 = v.parse().map_err(|_| bad())?;
        match k {
            "leader" => Ok(Target::Leader(n)),
            "node" if n >= 1 => Ok(Target::Node(n)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The fault.
    pub fault: FaultKind,
    /// Whom it hits (ignored by `rolling-restart`).
    #[serde(default = "random_target")]
    pub target: Target,
    /// Seconds the fault lasts before it is healed.
    #[serde(default = "default_hold")]
    pub hold_s: f64,
    /// Quiet seconds after the cluster recovered, before the next step.
    #[serde(default = "default_gap")]
    pub gap_s: f64,
    /// `latency`: delay added to every packet, ms (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// `latency`: each packet's delay is drawn uniformly from delay ± jitter, ms (default delay / 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<u64>,
    /// `latency`: percentage of packets dropped, 0–100 (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_pct: Option<f64>,
    /// `latency`: only the link between the target and this node (default: every link of the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<u64>,
    /// `clock-skew`: seconds added to the node's wall clock, negative for behind (default 7200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_s: Option<i64>,
}

/// Delay of a `latency` step that names none, ms.
pub const DEFAULT_DELAY_MS: u64 = 50;
/// Loss of a `latency` step that names none, percent.
pub const DEFAULT_LOSS_PCT: f64 = 5.0;
/// Skew of a `clock-skew` step that names none, s.
pub const DEFAULT_SKEW_S: i64 = 7200;

/// Delay, jitter and loss of a `latency` step (what the relays apply).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Added delay, ms.
    pub delay_ms: u64,
    /// ± jitter, ms.
    pub jitter_ms: u64,
    /// Loss, percent.
    pub loss_pct: f64,
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}±{} ms, {}% loss", self.delay_ms, self.jitter_ms, self.loss_pct)
    }
}

fn random_target() -> Target {
    Target::Random
}
fn default_hold() -> f64 {
    4.0
}
fn default_gap() -> f64 {
    8.0
}

impl Default for Step {
    fn default() -> Self {
        Step {
            fault: FaultKind::Kill,
            target: Target::Random,
            hold_s: default_hold(),
            gap_s: default_gap(),
            delay_ms: None,
            jitter_ms: None,
            loss_pct: None,
            peer: None,
            skew_s: None,
        }
    }
}

impl Step {
    /// A step with the default parameters of its fault.
    pub fn new(fault: FaultKind, target: Target, hold_s: f64, gap_s: f64) -> Step {
        Step { fault, target, hold_s, gap_s, ..Step::default() }
    }

    /// Rough wall time of the step (recovery assumed a few seconds), to fit a schedule in a duration.
    pub fn estimate_s(&self) -> f64 {
        let recovery = match self.fault {
            FaultKind::RollingRestart => 30.0,
            // Two restarts (into the skew and out of it), or a catch-up by snapshot.
            FaultKind::ClockSkew | FaultKind::SnapshotLag => 10.0,
            _ => 4.0,
        };
        self.hold_s + recovery + self.gap_s
    }

    /// The delay, jitter and loss of a `latency` step, defaults filled in.
    pub fn impairment(&self) -> Impairment {
        let delay_ms = self.delay_ms.unwrap_or(DEFAULT_DELAY_MS);
        Impairment {
            delay_ms,
            jitter_ms: self.jitter_ms.unwrap_or(delay_ms / 4),
            loss_pct: self.loss_pct.unwrap_or(DEFAULT_LOSS_PCT),
        }
    }

    /// The skew of a `clock-skew` step, default filled in.
    pub fn skew(&self) -> i64 {
        self.skew_s.unwrap_or(DEFAULT_SKEW_S)
    }

    /// Checks the parameters: each belongs to its fault and is in range. The error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let latency_keys = self.delay_ms.is_some()
            || self.jitter_ms.is_some()
            || self.loss_pct.is_some()
            || self.peer.is_some();
        if latency_keys && self.fault != FaultKind::Latency {
            return Err(format!(
                "delay_ms, jitter_ms, loss_pct and peer belong to `latency`, not `{}`",
                self.fault
            ));
        }
        if self.skew_s.is_some() && self.fault != FaultKind::ClockSkew {
            return Err(format!("skew_s belongs to `clock-skew`, not `{}`", self.fault));
        }
        let i = self.impairment();
        if i.delay_ms > 10_000 || i.jitter_ms > i.delay_ms {
            return Err(format!(
                "delay_ms = {} and jitter_ms = {}: use a delay ≤ 10000 ms and a jitter ≤ the delay",
                i.delay_ms, i.jitter_ms
            ));
        }
        if !(0.0..=100.0).contains(&i.loss_pct) {
            return Err(format!("loss_pct = {}: use 0–100", i.loss_pct));
        }
        if self.peer == Some(0) {
            return Err("peer = 0: node ids start at 1".into());
        }
        if let (Target::Node(n), Some(p)) = (self.target, self.peer) {
            if n == p {
                return Err(format!("peer = {p} is the target itself: name another node"));
            }
        }
        if self.skew().unsigned_abs() > 366 * 86_400 {
            return Err(format!("skew_s = {}: use at most a year either way", self.skew()));
        }
        Ok(())
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fault {
            FaultKind::RollingRestart => write!(f, "{} (gap {}s)", self.fault, self.gap_s),
            FaultKind::Latency => {
                let link = self.peer.map(|p| format!(" (link to node {p})")).unwrap_or_default();
                write!(
                    f,
                    "{} {}{link} {} for {}s (gap {}s)",
                    self.fault,
                    self.target,
                    self.impairment(),
                    self.hold_s,
                    self.gap_s
                )
            }
            FaultKind::ClockSkew => write!(
                f,
                "{} {} {:+}s for {}s (gap {}s)",
                self.fault,
                self.target,
                self.skew(),
                self.hold_s,
                self.gap_s
            ),
            _ => write!(f, "{} {} for {}s (gap {}s)", self.fault, self.target, self.hold_s, self.gap_s),
        }
    }
}

/// The built-in rotation used by `--schedule fixed` without a scenario: kill the meta leader, pause
/// a node, partition one node away, restart one gracefully, kill the leader of partition 1, one-way,
/// bridge, a rolling restart, disk full, latency, clock skew, snapshot lag; repeated (faults the backend cannot do are left out) until the duration is
/// filled.
pub fn fixed(kinds: &[FaultKind], duration_s: f64) -> Vec<Step> {
    let rotation = [
        Step::new(FaultKind::Kill, Target::Leader(0), 3.0, 8.0),
        Step::new(FaultKind::Pause, Target::Node(2), 5.0, 8.0),
        Step::new(FaultKind::Partition, Target::Node(3), 6.0, 8.0),
        Step::new(FaultKind::Restart, Target::Node(1), 2.0, 8.0),
        Step::new(FaultKind::Kill, Target::Leader(1), 3.0, 8.0),
        Step::new(FaultKind::OneWay, Target::Leader(0), 5.0, 8.0),
        Step::new(FaultKind::Bridge, Target::Node(1), 5.0, 8.0),
        Step::new(FaultKind::RollingRestart, Target::Random, 0.0, 8.0),
        Step::new(FaultKind::DiskFull, Target::Node(2), 8.0, 8.0),
        Step {
            delay_ms: Some(50),
            jitter_ms: Some(10),
            loss_pct: Some(5.0),
            ..Step::new(FaultKind::Latency, Target::Leader(0), 8.0, 8.0)
        },
        Step { skew_s: Some(7200), ..Step::new(FaultKind::ClockSkew, Target::Node(3), 5.0, 8.0) },
        Step::new(FaultKind::SnapshotLag, Target::Node(1), 20.0, 8.0),
    ];
    let usable: Vec<&Step> = rotation.iter().filter(|s| kinds.contains(&s.fault)).collect();
    fill(duration_s, |i| usable.get(i % usable.len().max(1)).map(|s| (*s).clone()))
}

/// A random schedule: a pure function of (seed, kinds, duration, nodes). Targets are drawn here
/// (a node id, or the leader of a random group), holds in 2–8 s, gaps in 5–12 s.
pub fn random(seed: u64, kinds: &[FaultKind], duration_s: f64, nodes: u64, groups: u64) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    fill(duration_s, |_| {
        if kinds.is_empty() {
            return None;
        }
        let fault = kinds[rng.random_range(0..kinds.len())];
        let target = if rng.random_bool(0.4) {
            Target::Leader(rng.random_range(0..=groups))
        } else {
            Target::Node(rng.random_range(1..=nodes))
        };
        let hold_s = f64::from(rng.random_range(4u32..=16)) / 2.0;
        let gap_s = f64::from(rng.random_range(10u32..=24)) / 2.0;
        let mut step = Step::new(fault, target, hold_s, gap_s);
        // Parameters of the newer kinds are drawn after the common ones, so the schedules of
        // seeds that do not use them are what they were before these kinds existed.
        match fault {
            FaultKind::Latency => {
                let delay = [20u64, 50, 100, 200, 400][rng.random_range(0..5)];
                step.delay_ms = Some(delay);
                step.jitter_ms = Some(delay / 4);
                step.loss_pct = Some([0.0, 1.0, 5.0, 20.0][rng.random_range(0..4)]);
            }
            FaultKind::ClockSkew => step.skew_s = Some(SKEWS[rng.random_range(0..SKEWS.len())]),
            // Long enough for the leaders to snapshot and purge past the paused node.
            FaultKind::SnapshotLag => step.hold_s = f64::from(rng.random_range(15u32..=30)),
            FaultKind::DiskFull => step.hold_s = f64::from(rng.random_range(5u32..=15)),
            _ => {}
        }
        Some(step)
    })
}

/// Skews a random `clock-skew` step draws from (s): a minute, two hours, a day and an hour (past
/// the 24 h queue retention), eight days (past the 7-day session expiry of MQTT 3.x sessions).
pub const SKEWS: [i64; 8] = [-60, 60, -7200, 7200, -90_000, 90_000, -691_200, 691_200];

/// Takes steps from `next` while their estimated time fits in the duration (at least one step).
fn fill(duration_s: f64, mut next: impl FnMut(usize) -> Option<Step>) -> Vec<Step> {
    let mut out = Vec::new();
    let mut used = 0.0;
    while let Some(step) = next(out.len()) {
        if !out.is_empty() && used + step.estimate_s() > duration_s {
            break;
        }
        used += step.estimate_s();
        out.push(step);
        if out.len() >= 10_000 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];

    #[test]
    fn same_seed_gives_the_same_schedule() {
        let a = random(42, &KINDS, 600.0, 3, 16);
        let b = random(42, &KINDS, 600.0, 3, 16);
        assert!(a.len() > 5, "{a:?}");
        assert_eq!(a, b);
    }

    #[test]
    fn different_seeds_give_different_schedules() {
        assert_ne!(random(1, &KINDS, 600.0, 3, 16), random(2, &KINDS, 600.0, 3, 16));
    }

    #[test]
    fn random_schedule_uses_only_the_given_kinds_and_fits_the_duration() {
        let s = random(7, &[FaultKind::Pause], 120.0, 3, 16);
        assert!(s.iter().all(|st| st.fault == FaultKind::Pause));
        let total: f64 = s.iter().map(Step::estimate_s).sum();
        assert!(total <= 120.0, "{total}");
        for st in &s {
            assert!((2.0..=8.0).contains(&st.hold_s));
            match st.target {
                Target::Node(n) => assert!((1..=3).contains(&n)),
                Target::Leader(g) => assert!(g <= 16),
                Target::Random => panic!("random schedules draw their targets"),
            }
        }
    }

    #[test]
    fn fixed_schedule_leaves_out_faults_the_backend_cannot_do() {
        let s = fixed(&[FaultKind::Kill, FaultKind::Pause], 200.0);
        assert!(!s.is_empty());
        assert!(s.iter().all(|st| matches!(st.fault, FaultKind::Kill | FaultKind::Pause)));
        assert_eq!(s[0].target, Target::Leader(0));
    }

    #[test]
    fn targets_and_kinds_parse_or_say_what_is_expected() {
        assert_eq!("leader:3".parse::<Target>(), Ok(Target::Leader(3)));
        assert_eq!("node:2".parse::<Target>(), Ok(Target::Node(2)));
        assert_eq!("random".parse::<Target>(), Ok(Target::Random));
        assert!("node:0".parse::<Target>().unwrap_err().contains("leader:GROUP"));
        assert!("boss".parse::<Target>().is_err());
        assert_eq!("one-way".parse::<FaultKind>(), Ok(FaultKind::OneWay));
        assert!("nuke".parse::<FaultKind>().unwrap_err().contains("kill"));
    }
}
