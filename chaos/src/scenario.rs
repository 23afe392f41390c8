//! Scenario files (`chaos/scenarios/*.toml`): the workload, the schedule and the time bound.
//!
//! ```toml
//! name = "ci"
//! duration_s = 100          # the fault phase; the run then heals, drains and checks
//! faults = ["kill", "pause", "partition"]   # kinds for `schedule = "random"`
//! schedule = "steps"        # "steps" (the [[step]] list), "fixed" or "random"
//! seed = 7                  # optional; --seed overrides
//!
//! [workload]
//! queue = true              # QoS 1/2 queue workload over MQTT (persistent sessions)
//! publishers = 3
//! subscribers = 2
//! rate = 20                 # messages/s per publisher
//! qos = 1
//! retained = true           # retained-message workload through the API
//! retained_keys = 8
//! retained_rate = 10        # writes/s
//!
//! [cluster]                 # optional; each key defaults to what the schedule's faults need
//! disk_mb = 64              # data dirs on a tmpfs of this size (default: 64 with disk-full steps)
//! relays = true             # UDP relays before the cluster ports (default: with latency steps)
//! snapshot_every = 100      # [raft] of the nodes (default: 100 / 20 with snapshot-lag steps)
//! keep_behind_snapshot = 20
//!
//! [[step]]
//! fault = "kill"
//! target = "leader:0"       # random | leader:GROUP | node:ID
//! hold_s = 3
//! gap_s = 8
//!
//! [[step]]
//! fault = "latency"         # also: delay_ms, jitter_ms, loss_pct, peer (one link)
//! target = "node:2"
//! delay_ms = 100
//! loss_pct = 5
//! ```
//!
//! Unknown keys are errors (a typo never silently changes a run).

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::schedule::{FaultKind, Step};

/// How the schedule is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleMode {
    /// The scenario's `[[step]]` list.
    Steps,
    /// The built-in rotation (kill leader, pause, partition, restart, ...).
    Fixed,
    /// Drawn from the seed.
    Random,
}

/// The workload settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Run the MQTT queue workload (needs the broker's MQTT listener).
    pub queue: bool,
    /// Publisher clients.
    pub publishers: usize,
    /// Persistent subscriber clients (each subscribes to every publisher's topic).
    pub subscribers: usize,
    /// Messages per second per publisher.
    pub rate: u32,
    /// QoS of the queue workload (1; 2 is refused until the client can resume QoS 2 sessions).
    pub qos: u8,
    /// Unreceived acknowledged messages per subscriber before publishers wait (below the broker's
    /// 150-message queue limit, so overflow cannot happen).
    pub window: u64,
    /// Run the retained-message workload through the API.
    pub retained: bool,
    /// Retained topics written round-robin.
    pub retained_keys: usize,
    /// Retained writes per second.
    pub retained_rate: u32,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            queue: true,
            publishers: 3,
            subscribers: 2,
            rate: 20,
            qos: 1,
            window: 100,
            retained: true,
            retained_keys: 8,
            retained_rate: 10,
        }
    }
}

impl Workload {
    /// Checks the settings; the error names the key and the fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.queue && !self.retained {
            bail!("workload: enable at least one of `queue` and `retained`");
        }
        if self.queue {
            if !(1..=2).contains(&self.qos) {
                bail!("workload.qos = {}: use 1 or 2", self.qos);
            }
            if self.publishers == 0 || self.subscribers == 0 || self.publishers > 32 || self.subscribers > 32
            {
                bail!("workload.publishers and workload.subscribers must be 1..=32");
            }
            if self.rate == 0 || self.rate > 500 {
                bail!("workload.rate = {}: use 1..=500 messages/s per publisher", self.rate);
            }
            if self.window == 0 || self.window >= 150 {
                bail!("workload.window = {}: use 1..=149 (the broker queues 150 per session)", self.window);
            }
        }
        if self.retained && (self.retained_keys == 0 || self.retained_rate == 0 || self.retained_rate > 200) {
            bail!("workload.retained_keys must be ≥ 1 and workload.retained_rate 1..=200 writes/s");
        }
        Ok(())
    }
}

/// The `[cluster]` section: how the nodes are set up for the faults that need it. Absent keys
/// follow the schedule (see [`crate::run::cluster_options`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Data dirs on a tmpfs of this many MiB.
    pub disk_mb: Option<u64>,
    /// UDP relays in front of the cluster ports.
    pub relays: Option<bool>,
    /// `[raft] snapshot_every` of the nodes.
    pub snapshot_every: Option<u64>,
    /// `[raft] keep_behind_snapshot` of the nodes.
    pub keep_behind_snapshot: Option<u64>,
}

/// A parsed scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (shown in the report).
    pub name: String,
    /// What it proves.
    #[serde(default)]
    pub description: String,
    /// Seconds of the fault phase.
    pub duration_s: f64,
    /// How the schedule is made (default: `steps` when steps are listed, else `fixed`).
    #[serde(default)]
    pub schedule: Option<ScheduleMode>,
    /// Fault kinds for the random and fixed schedules.
    #[serde(default)]
    pub faults: Option<Vec<FaultKind>>,
    /// Seed (random schedules, random targets).
    #[serde(default)]
    pub seed: Option<u64>,
    /// The workload.
    #[serde(default)]
    pub workload: Workload,
    /// The steps of a `steps` schedule.
    #[serde(default, rename = "step")]
    pub steps: Vec<Step>,
    /// Node set-up for the faults that need it.
    #[serde(default)]
    pub cluster: ClusterSection,
}

impl Scenario {
    /// Parses scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text).with_context(|| format!("{origin}: not a valid scenario"))?;
        if !(s.duration_s > 0.0 && s.duration_s <= 7.0 * 86_400.0) {
            bail!("{origin}: duration_s = {} must be in (0, 604800]", s.duration_s);
        }
        if s.schedule == Some(ScheduleMode::Steps) && s.steps.is_empty() {
            bail!("{origin}: schedule = \"steps\" needs at least one [[step]]");
        }
        for (i, st) in s.steps.iter().enumerate() {
            if !(st.hold_s >= 0.0 && st.hold_s <= 3600.0 && st.gap_s >= 0.0 && st.gap_s <= 3600.0) {
                bail!("{origin}: step {} hold_s/gap_s must be within 0..=3600 seconds", i + 1);
            }
            if let Err(e) = st.validate() {
                bail!("{origin}: step {}: {e}", i + 1);
            }
        }
        s.workload.validate().with_context(|| origin.to_string())?;
        if s.cluster.disk_mb.is_some_and(|m| !(16..=65_536).contains(&m)) {
            bail!("{origin}: cluster.disk_mb must be 16..=65536 MiB");
        }
        if s.cluster.snapshot_every == Some(0) {
            bail!("{origin}: cluster.snapshot_every must be at least 1");
        }
        Ok(s)
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// The schedule mode this scenario asks for.
    pub fn mode(&self) -> ScheduleMode {
        self.schedule.unwrap_or(if self.steps.is_empty() { ScheduleMode::Fixed } else { ScheduleMode::Steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Target;

    #[test]
    fn parses_steps_and_workload() {
        let s = Scenario::parse(
            r#"
name = "t"
duration_s = 60
[workload]
publishers = 2
rate = 5
[[step]]
fault = "kill"
target = "leader:0"
hold_s = 2
[[step]]
fault = "pause"
target = "node:3"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(s.mode(), ScheduleMode::Steps);
        assert_eq!(s.workload.publishers, 2);
        assert_eq!(s.workload.subscribers, Workload::default().subscribers);
        assert_eq!(
            s.steps,
            vec![
                Step::new(FaultKind::Kill, Target::Leader(0), 2.0, 8.0),
                Step::new(FaultKind::Pause, Target::Node(3), 4.0, 8.0),
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let typo = Scenario::parse("name='x'\nduration_s=10\ndurration=3\n", "x.toml").unwrap_err();
        assert!(format!("{typo:#}").contains("durration"), "{typo:#}");
        let fault =
            Scenario::parse("name='x'\nduration_s=10\n[[step]]\nfault='nuke'\n", "x.toml").unwrap_err();
        assert!(format!("{fault:#}").contains("nuke"), "{fault:#}");
        let qos = Scenario::parse("name='x'\nduration_s=10\n[workload]\nqos=3\n", "x.toml").unwrap_err();
        assert!(format!("{qos:#}").contains("qos"), "{qos:#}");
        let qos2 = Scenario::parse("name='x'\nduration_s=10\n[workload]\nqos=2\n", "x.toml");
        assert_eq!(qos2.expect("QoS 2 is a valid workload").workload.qos, 2);
        let misplaced =
            Scenario::parse("name='x'\nduration_s=10\n[[step]]\nfault='kill'\nloss_pct=5\n", "x.toml")
                .unwrap_err();
        assert!(format!("{misplaced:#}").contains("belong to `latency`"), "{misplaced:#}");
        let loss =
            Scenario::parse("name='x'\nduration_s=10\n[[step]]\nfault='latency'\nloss_pct=150\n", "x.toml")
                .unwrap_err();
        assert!(format!("{loss:#}").contains("loss_pct"), "{loss:#}");
        let disk = Scenario::parse("name='x'\nduration_s=10\n[cluster]\ndisk_mb=1\n", "x.toml").unwrap_err();
        assert!(format!("{disk:#}").contains("disk_mb"), "{disk:#}");
        let window =
            Scenario::parse("name='x'\nduration_s=10\n[workload]\nwindow=150\n", "x.toml").unwrap_err();
        assert!(format!("{window:#}").contains("150"), "{window:#}");
        assert!(Scenario::parse("name='x'\nduration_s=-1\n", "x.toml").is_err());
    }

    #[test]
    fn parses_the_new_faults_and_their_parameters() {
        let s = Scenario::parse(
            r#"
name = "t"
duration_s = 60
[cluster]
disk_mb = 32
snapshot_every = 50
[[step]]
fault = "latency"
target = "node:1"
delay_ms = 200
jitter_ms = 40
loss_pct = 10
peer = 2
[[step]]
fault = "latency"
target = "leader:0"
[[step]]
fault = "clock-skew"
target = "node:3"
skew_s = -90000
[[step]]
fault = "disk-full"
target = "node:2"
[[step]]
fault = "snapshot-lag"
target = "node:1"
hold_s = 20
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            s.cluster,
            ClusterSection { disk_mb: Some(32), snapshot_every: Some(50), ..Default::default() }
        );
        let i = s.steps[0].impairment();
        assert_eq!((i.delay_ms, i.jitter_ms, i.loss_pct, s.steps[0].peer), (200, 40, 10.0, Some(2)));
        let d = s.steps[1].impairment();
        assert_eq!((d.delay_ms, d.jitter_ms, d.loss_pct), (50, 12, 5.0), "defaults");
        assert_eq!(s.steps[2].skew(), -90_000);
        assert_eq!(
            s.steps.iter().map(|x| x.fault).collect::<Vec<_>>(),
            vec![
                FaultKind::Latency,
                FaultKind::Latency,
                FaultKind::ClockSkew,
                FaultKind::DiskFull,
                FaultKind::SnapshotLag
            ]
        );
        assert!(s.steps[0].to_string().contains("link to node 2"), "{}", s.steps[0]);
        let own = Scenario::parse(
            "name='x'\nduration_s=10\n[[step]]\nfault='latency'\ntarget='node:2'\npeer=2\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(format!("{own:#}").contains("target itself"), "{own:#}");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap();
                n += 1;
            }
        }
        assert!(n >= 2, "expected the ci and soak scenarios in {}", dir.display());
    }
}
