//! How far each peer's wall clock is from this node's, so that message ages (queue retention,
//! MQTT 5 message expiry) are measured by the clock that stamped the message.
//!
//! Every node applies every PUBLISH of the partitions it replicates, moments after the publisher's
//! node stamped it (`Message::at_ms`, `Message::node`). `now - at_ms` is then our clock's lead over
//! that node's plus the replication delay, never less: the smallest of the recent samples bounds the
//! lead from above, so a corrected age is never more than the true one — a skewed clock can delay
//! an expiry by the replication delay, but never expire a message early. Without this, a node whose
//! clock ran a day ahead dropped freshly queued messages as older than the 24 h retention.

use std::collections::{HashMap, VecDeque};

use ironhub_raft::NodeId;
use parking_lot::Mutex;

use super::now_ms;
use crate::state::session::Message;

/// Samples kept per peer.
const WINDOW: usize = 64;
/// A lead beyond this is logged as a clock problem.
const WARN_MS: i64 = 60_000;

/// Per-peer clock lead estimates of this node.
pub struct PeerClocks {
    me: NodeId,
    samples: Mutex<HashMap<NodeId, VecDeque<i64>>>,
    gauge: prometheus::IntGaugeVec,
}

impl PeerClocks {
    /// Estimates for node `me`, exported in `gauge` (by peer).
    pub fn new(me: NodeId, gauge: prometheus::IntGaugeVec) -> Self {
        Self { me, samples: Mutex::new(HashMap::new()), gauge }
    }

    /// A message stamped by `node` at `at_ms` was applied here now.
    pub fn observe(&self, node: NodeId, at_ms: u64) {
        if node == 0 || node == self.me {
            return;
        }
        let lag = now_ms() as i64 - at_ms as i64;
        let mut samples = self.samples.lock();
        let w = samples.entry(node).or_default();
        let before = w.iter().min().copied();
        w.push_back(lag);
        if w.len() > WINDOW {
            w.pop_front();
        }
        let lead = w.iter().min().copied().unwrap_or(0);
        self.gauge.with_label_values(&[&node.to_string()]).set(lead);
        let was_off = before.is_some_and(|b| b.abs() > WARN_MS);
        if lead.abs() > WARN_MS && !was_off {
            tracing::warn!(
                peer = node,
                lead_ms = lead,
                "this node's clock is {:.1} s {} node {node}'s: keep clocks in sync (NTP); message ages are corrected meanwhile",
                lead.abs() as f64 / 1000.0,
                if lead > 0 { "ahead of" } else { "behind" }
            );
        }
    }

    /// How many ms this node's clock leads `node`'s (0 for itself or an unknown node).
    pub fn lead(&self, node: NodeId) -> i64 {
        self.samples.lock().get(&node).and_then(|w| w.iter().min().copied()).unwrap_or(0)
    }

    /// The age of `msg` by the clock that stamped it.
    pub fn age_ms(&self, msg: &Message) -> u64 {
        let age = now_ms() as i64 - msg.at_ms as i64 - self.lead(msg.node);
        age.max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks() -> PeerClocks {
        let g = prometheus::IntGaugeVec::new(prometheus::Opts::new("t", "t"), &["node"]).expect("gauge");
        PeerClocks::new(1, g)
    }

    fn msg(node: NodeId, at_ms: u64) -> Message {
        Message { at_ms, node, ..Message::default() }
    }

    #[test]
    fn a_peer_a_day_behind_does_not_make_its_messages_a_day_old() {
        let c = clocks();
        let day: u64 = 86_400_000;
        // node 2's clock is a day behind ours: its fresh messages carry stamps a day old
        for _ in 0..10 {
            c.observe(2, now_ms() - day);
        }
        assert!(c.lead(2) >= day as i64 && c.lead(2) < day as i64 + 1000);
        assert!(c.age_ms(&msg(2, now_ms() - day)) < 1000, "a fresh message from node 2");
        // our own and unknown nodes' stamps are taken as they are
        assert!(c.age_ms(&msg(1, now_ms() - 5000)) >= 5000);
        assert!(c.age_ms(&msg(0, now_ms() - 5000)) >= 5000);
    }

    #[test]
    fn replayed_old_messages_never_make_ages_larger() {
        let c = clocks();
        // a restart replays hour-old entries: the lead looks like an hour, ages look younger
        c.observe(3, now_ms() - 3_600_000);
        assert!(c.age_ms(&msg(3, now_ms() - 10_000)) < 10_000);
        // fresh traffic brings the estimate back to the real (zero) lead
        c.observe(3, now_ms());
        assert!(c.lead(3) <= 5);
        // a peer ahead of us (future stamps) gives a negative lead: its messages age normally
        c.observe(4, now_ms() + 30_000);
        let fresh = c.age_ms(&msg(4, now_ms() + 30_000));
        assert!(fresh < 1000, "{fresh}");
    }
}
