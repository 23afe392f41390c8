//! The history: every operation a client invoked and what it saw, plus the nemesis' faults.
//!
//! One [`Event`] per line in `history.jsonl`. The shape follows Jepsen: a client operation is an
//! `invoke` followed by `ok` (it took effect), `fail` (it certainly did not) or `unknown` (it may
//! have: a timeout or a broken connection after the request left). `info` events are observations
//! (a fault, a recovery, a metric sample, a delivery). A register checker (device shadows) will use
//! the generic [`Op::Write`] / [`Op::Read`] operations on a key, as the retained workload does.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What happened to an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The client sent the request.
    Invoke,
    /// The operation took effect (for a publish: PUBACK/PUBCOMP received).
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// It may or may not have taken effect (timeout, connection lost after sending).
    Unknown,
    /// An observation, not a client operation.
    Info,
}

/// The operation, with its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", content = "value", rename_all = "snake_case")]
pub enum Op {
    /// A PUBLISH by a publisher process: `seq` counts up per publisher from 1.
    Publish {
        /// Topic.
        topic: String,
        /// Per-publisher sequence number (also the payload).
        seq: u64,
        /// QoS (1 or 2).
        qos: u8,
    },
    /// A PUBLISH received by a subscriber process.
    Deliver {
        /// The publisher process that sent it.
        publisher: String,
        /// Its sequence number.
        seq: u64,
        /// The DUP flag.
        dup: bool,
        /// QoS of the delivery.
        qos: u8,
    },
    /// A CONNECT answered by CONNACK (ok) or not (fail).
    Connect {
        /// Node id the client connected to.
        node: u64,
        /// Clean session flag sent.
        clean: bool,
        /// Session present in CONNACK.
        session_present: bool,
    },
    /// The client's connection broke (info).
    Disconnect {
        /// Node id it was connected to.
        node: u64,
        /// Why.
        reason: String,
    },
    /// A SUBSCRIBE answered by SUBACK.
    Subscribe {
        /// Topic filter.
        filter: String,
        /// Node id.
        node: u64,
    },
    /// A register write (retained message set through the API).
    Write {
        /// Register key (the topic).
        key: String,
        /// The value written.
        value: String,
        /// Node id the request went to.
        node: u64,
    },
    /// A register read; `value` is None when the key is absent.
    Read {
        /// Register key.
        key: String,
        /// The value read.
        value: Option<String>,
        /// Node id the request went to.
        node: u64,
    },
    /// The nemesis injected a fault (index into the schedule).
    Fault {
        /// Step index.
        step: usize,
        /// Human description (e.g. `kill -9 node 2 (leader of group 0)`).
        desc: String,
        /// Nodes affected.
        nodes: Vec<u64>,
    },
    /// The nemesis ended a fault (restart, resume, heal).
    Heal {
        /// Step index.
        step: usize,
        /// What was done.
        desc: String,
    },
    /// A step was skipped because the backend cannot do it.
    Skipped {
        /// Step index.
        step: usize,
        /// Why.
        reason: String,
    },
    /// Liveness after a step: every group of every node led and /healthz 200 (ok), or not in time.
    Recovered {
        /// Step index (`usize::MAX` for the final check).
        step: usize,
        /// Milliseconds from the heal to full health.
        ms: u64,
        /// Whether the cluster recovered before the timeout.
        recovered: bool,
        /// The last problem seen (empty when recovered).
        detail: String,
    },
    /// Failover during a fault: the nodes not hit saw a leader among themselves for every group.
    Failover {
        /// Step index.
        step: usize,
        /// Milliseconds from the injection until every group was led among the nodes not hit
        /// (or the hold time, when that did not happen during the hold).
        ms: u64,
        /// Whether it happened while the fault was held.
        within_hold: bool,
    },
    /// A `/metrics` sample of `ironhub_queue_dropped_total` (absent metric = 0).
    Dropped {
        /// Node id.
        node: u64,
        /// Counter value.
        total: u64,
        /// The part of it with `reason="expired"` (absent in histories written before it was kept).
        #[serde(default)]
        expired: u64,
    },
    /// What a fault did beyond the cluster recovering: a node's exit on a full disk, a restart it
    /// needed, a skew that took effect, a lagging node's catch-up by snapshot. `failed` findings
    /// fail the liveness checker.
    Finding {
        /// Step index.
        step: usize,
        /// The node concerned.
        node: u64,
        /// What was seen.
        what: String,
        /// Whether it breaks a guarantee.
        failed: bool,
    },
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the run started.
    pub t_ms: u64,
    /// Who: `pub-0`, `sub-1`, `retained`, `nemesis`, `final-read`, ...
    pub process: String,
    /// invoke / ok / fail / unknown / info.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The operation and its value.
    #[serde(flatten)]
    pub op: Op,
    /// Latency of a completed operation (ms), from its invoke.
    #[serde(default)]
    pub latency_ms: Option<u64>,
}

/// A shared, append-only history (cheap to clone).
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    /// A new empty history whose clock starts now.
    pub fn new() -> Self {
        Recorder { start: Instant::now(), events: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Appends an event stamped now.
    pub fn record(&self, process: &str, kind: Kind, op: Op) {
        self.record_with_latency(process, kind, op, None);
    }

    /// Appends an event stamped now with the operation's latency.
    pub fn record_with_latency(&self, process: &str, kind: Kind, op: Op, latency_ms: Option<u64>) {
        let ev = Event { t_ms: self.now_ms(), process: process.to_string(), kind, op, latency_ms };
        // A poisoned lock only means another recorder panicked mid-push; the vector is intact.
        let mut g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        g.push(ev);
    }

    /// A copy of every event so far, in recording order.
    pub fn snapshot(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Writes the history as JSON lines.
pub fn write_jsonl(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    for e in events {
        serde_json::to_writer(&mut w, e)?;
        w.write_all(b"\n")?;
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a history written by [`write_jsonl`]; a bad line is an error naming its number.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Event>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a history event", path.display(), i + 1))?;
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_jsonl() {
        let r = Recorder::new();
        r.record("pub-0", Kind::Invoke, Op::Publish { topic: "chaos/q/pub-0".into(), seq: 1, qos: 1 });
        r.record_with_latency(
            "pub-0",
            Kind::Ok,
            Op::Publish { topic: "chaos/q/pub-0".into(), seq: 1, qos: 1 },
            Some(3),
        );
        r.record("final-read", Kind::Ok, Op::Read { key: "k".into(), value: None, node: 2 });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        let evs = r.snapshot();
        write_jsonl(&p, &evs).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.lines().next().unwrap().contains(r#""type":"invoke","op":"publish","value":{"#));
        assert_eq!(read_jsonl(&p).unwrap(), evs);
    }

    #[test]
    fn a_bad_line_names_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        std::fs::write(&p, "{\"t_ms\":1}\n").unwrap();
        let e = read_jsonl(&p).unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
    }
}
