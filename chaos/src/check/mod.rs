//! Checkers: each reads the whole history and gives a verdict with counts.
//!
//! [`Checker`] is the whole interface: a checker sees only the history (never the cluster), so it
//! can be re-run on a saved `history.jsonl` (`ironhub-chaos check`) and tested on synthetic
//! histories. A linearizable-register checker for device shadows is one more implementation over
//! the generic [`crate::history::Op::Write`] / [`crate::history::Op::Read`] operations.

pub mod availability;
pub mod liveness;
pub mod queue;
pub mod retained;
pub mod session;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::Event;

/// Pass or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// The property held.
    Pass,
    /// It did not (or could not be verified).
    Fail,
}

/// A checker's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    /// Checker name.
    pub name: String,
    /// Verdict.
    pub verdict: Verdict,
    /// Named counts (lost, duplicates, ...), in name order.
    pub counts: BTreeMap<String, u64>,
    /// One line per finding (capped), e.g. which message was lost.
    pub details: Vec<String>,
}

/// Most detail lines a result keeps.
pub const MAX_DETAILS: usize = 25;

impl CheckResult {
    /// A passing result with no counts yet.
    pub fn new(name: &str) -> CheckResult {
        CheckResult {
            name: name.to_string(),
            verdict: Verdict::Pass,
            counts: BTreeMap::new(),
            details: Vec::new(),
        }
    }

    /// Sets a count.
    pub fn count(&mut self, key: &str, v: u64) {
        self.counts.insert(key.to_string(), v);
    }

    /// Marks the result failed with a reason.
    pub fn fail(&mut self, why: String) {
        self.verdict = Verdict::Fail;
        self.detail(why);
    }

    /// Adds a detail line (up to [`MAX_DETAILS`]).
    pub fn detail(&mut self, line: String) {
        if self.details.len() < MAX_DETAILS {
            self.details.push(line);
        }
    }

    /// Reads a count (0 when absent).
    #[cfg(test)]
    pub fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }
}

/// A property of a history.
pub trait Checker {
    /// Short name shown in the summary.
    fn name(&self) -> &'static str;
    /// Checks the history.
    fn check(&self, history: &[Event]) -> CheckResult;
}

/// The checkers for a run with the given workloads.
pub fn for_workloads(queue: bool, qos: u8, retained: bool) -> Vec<Box<dyn Checker>> {
    let mut v: Vec<Box<dyn Checker>> = Vec::new();
    if queue {
        v.push(Box::new(queue::QueueChecker { qos }));
        v.push(Box::new(session::SessionChecker));
    }
    if retained {
        v.push(Box::new(retained::RetainedChecker));
    }
    v.push(Box::new(liveness::LivenessChecker));
    v.push(Box::new(availability::AvailabilityChecker));
    v
}

/// Test helpers: build synthetic histories.
#[cfg(test)]
pub mod testing {
    use crate::history::{Event, Kind, Op};

    /// An event at `t` ms.
    pub fn ev(t: u64, process: &str, kind: Kind, op: Op) -> Event {
        Event { t_ms: t, process: process.into(), kind, op, latency_ms: None }
    }

    /// A publish by `pub-<p>` of `seq`: invoke at `t`, completion `kind` at `t + 5`.
    pub fn publish(t: u64, p: usize, seq: u64, kind: Kind) -> Vec<Event> {
        let op = Op::Publish { topic: format!("chaos/q/pub-{p}"), seq, qos: 1 };
        let mut done = ev(t + 5, &format!("pub-{p}"), kind, op.clone());
        done.latency_ms = Some(5);
        vec![ev(t, &format!("pub-{p}"), Kind::Invoke, op), done]
    }

    /// A delivery to `sub` of `pub-<p>` `seq` at `t`.
    pub fn deliver(t: u64, sub: &str, p: usize, seq: u64) -> Event {
        ev(t, sub, Kind::Info, Op::Deliver { publisher: format!("pub-{p}"), seq, dup: false, qos: 1 })
    }

    /// A subscriber's SUBACK at `t`.
    pub fn subscribed(t: u64, sub: &str) -> Event {
        ev(t, sub, Kind::Ok, Op::Subscribe { filter: "chaos/q/+".into(), node: 1 })
    }
}
