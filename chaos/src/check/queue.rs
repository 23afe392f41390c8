//! Lost and duplicated queue messages.
//!
//! Every publish acknowledged by the broker (PUBACK/PUBCOMP) must be delivered to every subscriber
//! whose first SUBACK came before the publish was invoked. Missing ones are lost (FAIL), unless the
//! broker counted at least as many queue drops (`ironhub_queue_dropped_total`): then they are
//! reported as overflow. Drops with `reason="expired"` do not count while the history is shorter
//! than the broker's default queue retention (24 h): the workload's messages carry no expiry, so
//! such a drop means a node misjudged a message's age (a skewed clock) and the message is lost. Deliveries of a message more than once are duplicates: counted for QoS 1,
//! a failure for QoS 2. A delivery of something never published is a phantom (FAIL). Unknown
//! publishes may or may not arrive; both are fine.

use std::collections::{BTreeMap, HashMap};

use super::{CheckResult, Checker};
use crate::history::{Event, Kind, Op};

/// The queue checker.
pub struct QueueChecker {
    /// QoS of the workload (2 forbids duplicates).
    pub qos: u8,
}

/// The broker's default queue retention: a message this old may be dropped as expired.
pub const QUEUE_RETENTION_MS: u64 = 24 * 3600 * 1000;

/// (all drops, drops as expired): sums of increases per node, a decrease meaning a restart.
pub fn dropped_totals(history: &[Event]) -> (u64, u64) {
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    let (mut total, mut expired) = (0, 0);
    let inc = |v: u64, prev: u64| if v >= prev { v - prev } else { v };
    for e in history {
        if let Op::Dropped { node, total: v, expired: x } = &e.op {
            let prev = last.insert(*node, (*v, *x)).unwrap_or((0, 0));
            total += inc(*v, prev.0);
            expired += inc(*x, prev.1);
        }
    }
    (total, expired)
}

impl Checker for QueueChecker {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn check(&self, history: &[Event]) -> CheckResult {
        let mut r = CheckResult::new(self.name());
        // (publisher, seq) -> (invoke time, final kind)
        let mut pubs: BTreeMap<(String, u64), (u64, Option<Kind>)> = BTreeMap::new();
        let mut first_sub: BTreeMap<String, u64> = BTreeMap::new();
        let mut got: BTreeMap<String, HashMap<(String, u64), u64>> = BTreeMap::new();
        for e in history {
            match (&e.op, e.kind) {
                (Op::Publish { seq, .. }, Kind::Invoke) => {
                    pubs.insert((e.process.clone(), *seq), (e.t_ms, None));
                }
                (Op::Publish { seq, .. }, k) => {
                    if let Some(p) = pubs.get_mut(&(e.process.clone(), *seq)) {
                        p.1 = Some(k);
                    }
                }
                (Op::Subscribe { .. }, Kind::Ok) => {
                    first_sub.entry(e.process.clone()).or_insert(e.t_ms);
                }
                (Op::Deliver { publisher, seq, .. }, _) => {
                    *got.entry(e.process.clone())
                        .or_default()
                        .entry((publisher.clone(), *seq))
                        .or_insert(0) += 1;
                }
                _ => {}
            }
        }
        let acked: Vec<(&(String, u64), u64)> =
            pubs.iter().filter(|(_, v)| v.1 == Some(Kind::Ok)).map(|(k, v)| (k, v.0)).collect();
        let unknown = pubs.values().filter(|v| matches!(v.1, Some(Kind::Unknown) | None)).count() as u64;
        r.count("acked", acked.len() as u64);
        r.count("unknown", unknown);
        r.count("subscribers", first_sub.len() as u64);
        if acked.is_empty() || first_sub.is_empty() {
            r.fail("no acknowledged publish or no subscriber: the queue workload did not run".into());
        }
        let mut lost = 0u64;
        let mut dups = 0u64;
        let mut phantom = 0u64;
        let mut delivered = 0u64;
        for (sub, since) in &first_sub {
            let empty = HashMap::new();
            let g = got.get(sub).unwrap_or(&empty);
            for ((p, seq), t) in &acked {
                if *t >= *since && !g.contains_key(&(p.clone(), *seq)) {
                    lost += 1;
                    r.detail(format!("{sub} never received {p} #{seq} (acknowledged, published at {t} ms)"));
                }
            }
            for (k, n) in g {
                delivered += n;
                dups += n - 1;
                if !pubs.contains_key(k) {
                    phantom += 1;
                    r.detail(format!("{sub} received {} #{} that was never published", k.0, k.1));
                }
            }
        }
        let (all_drops, expired) = dropped_totals(history);
        let span = history.last().map_or(0, |e| e.t_ms);
        let dropped = if span < QUEUE_RETENTION_MS && expired > 0 {
            r.detail(format!(
                "the broker dropped {expired} queued messages as expired, although the workload's messages \
                 have no expiry and the run lasted {} s, less than the 24 h queue retention: a node misjudged \
                 their age (a skewed clock?); these are not counted as overflow",
                span / 1000
            ));
            all_drops - expired
        } else {
            all_drops
        };
        r.count("delivered", delivered);
        r.count("lost", lost);
        r.count("duplicates", dups);
        r.count("phantom", phantom);
        r.count("dropped_by_broker", all_drops);
        r.count("dropped_expired", expired);
        if lost > dropped {
            r.fail(format!("{lost} acknowledged deliveries lost (broker counted {dropped} queue drops)"));
        } else if lost > 0 {
            r.detail(format!(
                "{lost} missing deliveries are covered by {dropped} queue drops: overflow, not loss"
            ));
            r.count("overflow", lost);
        }
        if phantom > 0 {
            r.fail(format!("{phantom} deliveries of messages never published"));
        }
        if self.qos >= 2 && dups > 0 {
            r.fail(format!("{dups} duplicate deliveries at QoS 2 (exactly once)"));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::*;
    use crate::check::Verdict;

    fn base() -> Vec<Event> {
        let mut h = vec![subscribed(0, "sub-0"), subscribed(1, "sub-1")];
        for s in 1..=3 {
            h.extend(publish(10 * s, 0, s, Kind::Ok));
        }
        h
    }

    #[test]
    fn every_acked_message_delivered_passes() {
        let mut h = base();
        for sub in ["sub-0", "sub-1"] {
            for s in 1..=3 {
                h.push(deliver(100 + s, sub, 0, s));
            }
        }
        let r = QueueChecker { qos: 1 }.check(&h);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert_eq!((r.get("acked"), r.get("lost"), r.get("delivered")), (3, 0, 6));
    }

    #[test]
    fn a_lost_acked_message_fails() {
        let mut h = base();
        for s in 1..=3 {
            h.push(deliver(100 + s, "sub-0", 0, s));
        }
        h.push(deliver(200, "sub-1", 0, 1));
        h.push(deliver(201, "sub-1", 0, 3));
        let r = QueueChecker { qos: 1 }.check(&h);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.get("lost"), 1);
        assert!(r.details.iter().any(|d| d.contains("sub-1 never received pub-0 #2")), "{:?}", r.details);
    }

    #[test]
    fn duplicates_are_counted_at_qos1_and_fail_at_qos2() {
        let mut h = base();
        for sub in ["sub-0", "sub-1"] {
            for s in 1..=3 {
                h.push(deliver(100 + s, sub, 0, s));
            }
        }
        h.push(deliver(300, "sub-0", 0, 2));
        h.push(deliver(301, "sub-0", 0, 2));
        let q1 = QueueChecker { qos: 1 }.check(&h);
        assert_eq!((q1.verdict, q1.get("duplicates")), (Verdict::Pass, 2));
        let q2 = QueueChecker { qos: 2 }.check(&h);
        assert_eq!((q2.verdict, q2.get("duplicates")), (Verdict::Fail, 2));
    }

    #[test]
    fn unknown_publishes_may_be_missing_and_late_subscribers_owe_nothing_earlier() {
        let mut h = vec![subscribed(0, "sub-0")];
        h.extend(publish(10, 0, 1, Kind::Ok));
        h.extend(publish(20, 0, 2, Kind::Unknown));
        h.push(subscribed(25, "sub-1"));
        h.extend(publish(30, 0, 3, Kind::Ok));
        h.push(deliver(40, "sub-0", 0, 1));
        h.push(deliver(41, "sub-0", 0, 3));
        h.push(deliver(42, "sub-1", 0, 3));
        let r = QueueChecker { qos: 1 }.check(&h);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert_eq!(r.get("unknown"), 1);
    }

    #[test]
    fn missing_messages_covered_by_broker_drops_are_overflow_not_loss() {
        let mut h = base();
        h.push(deliver(100, "sub-0", 0, 1));
        h.push(deliver(100, "sub-0", 0, 2));
        h.push(deliver(100, "sub-0", 0, 3));
        h.push(deliver(100, "sub-1", 0, 3));
        h.push(ev(50, "metrics", Kind::Info, Op::Dropped { node: 2, total: 0, expired: 0 }));
        h.push(ev(90, "metrics", Kind::Info, Op::Dropped { node: 2, total: 2, expired: 0 }));
        let r = QueueChecker { qos: 1 }.check(&h);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert_eq!((r.get("lost"), r.get("overflow"), r.get("dropped_by_broker")), (2, 2, 2));
    }

    #[test]
    fn messages_dropped_as_expired_in_a_short_run_are_lost_not_overflow() {
        let mut h = base();
        h.push(deliver(100, "sub-0", 0, 1));
        h.push(deliver(100, "sub-0", 0, 2));
        h.push(deliver(100, "sub-0", 0, 3));
        h.push(deliver(100, "sub-1", 0, 3));
        h.push(ev(90, "metrics", Kind::Info, Op::Dropped { node: 2, total: 2, expired: 2 }));
        let r = QueueChecker { qos: 1 }.check(&h);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert_eq!((r.get("lost"), r.get("dropped_expired")), (2, 2));
        assert!(r.details.iter().any(|d| d.contains("skewed clock")), "{r:?}");
    }

    #[test]
    fn phantoms_and_an_idle_workload_fail() {
        let mut h = base();
        for sub in ["sub-0", "sub-1"] {
            for s in 1..=3 {
                h.push(deliver(100 + s, sub, 0, s));
            }
        }
        h.push(deliver(400, "sub-0", 7, 1));
        assert_eq!(QueueChecker { qos: 1 }.check(&h).verdict, Verdict::Fail);
        assert_eq!(QueueChecker { qos: 1 }.check(&[subscribed(0, "sub-0")]).verdict, Verdict::Fail);
    }

    #[test]
    fn dropped_total_survives_counter_resets() {
        let h = vec![
            ev(1, "metrics", Kind::Info, Op::Dropped { node: 1, total: 3, expired: 0 }),
            ev(2, "metrics", Kind::Info, Op::Dropped { node: 1, total: 5, expired: 1 }),
            ev(3, "metrics", Kind::Info, Op::Dropped { node: 1, total: 1, expired: 0 }),
            ev(4, "metrics", Kind::Info, Op::Dropped { node: 2, total: 4, expired: 2 }),
        ];
        assert_eq!(dropped_totals(&h), (10, 1 + 2));
    }
}
