//! The last acknowledged retained value survives: after the cluster healed, each key read from
//! every node holds the value of its last acknowledged write, or of a write whose outcome is
//! unknown (a timed-out request may still apply, even later). Every node must read the same value
//! (reads are linearizable and nothing writes during the final reads). A key that cannot be read
//! fails the check: it could not be verified.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckResult, Checker};
use crate::history::{Event, Kind, Op};

/// The retained checker.
pub struct RetainedChecker;

#[derive(Default)]
struct Key {
    /// (invoke time, value, outcome) in invoke order.
    writes: Vec<(u64, String, Option<Kind>)>,
    /// node -> value read (None = absent); Err = the read failed.
    reads: BTreeMap<u64, Result<Option<String>, ()>>,
}

impl Checker for RetainedChecker {
    fn name(&self) -> &'static str {
        "retained"
    }

    fn check(&self, history: &[Event]) -> CheckResult {
        let mut r = CheckResult::new(self.name());
        let mut keys: BTreeMap<String, Key> = BTreeMap::new();
        for e in history {
            match (&e.op, e.kind) {
                (Op::Write { key, value, .. }, Kind::Invoke) => {
                    keys.entry(key.clone()).or_default().writes.push((e.t_ms, value.clone(), None));
                }
                (Op::Write { key, value, .. }, k) => {
                    if let Some(w) =
                        keys.get_mut(key).and_then(|x| x.writes.iter_mut().rev().find(|w| &w.1 == value))
                    {
                        w.2 = Some(k);
                    }
                }
                (Op::Read { key, value, node }, Kind::Ok) if e.process == "final-read" => {
                    keys.entry(key.clone()).or_default().reads.insert(*node, Ok(value.clone()));
                }
                (Op::Read { key, node, .. }, _) if e.process == "final-read" => {
                    keys.entry(key.clone()).or_default().reads.insert(*node, Err(()));
                }
                _ => {}
            }
        }
        let (mut acked, mut unknown, mut failed, mut reads, mut bad) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for (key, k) in &keys {
            let last_ok = k.writes.iter().rposition(|w| w.2 == Some(Kind::Ok));
            acked += k.writes.iter().filter(|w| w.2 == Some(Kind::Ok)).count() as u64;
            failed += k.writes.iter().filter(|w| w.2 == Some(Kind::Fail)).count() as u64;
            unknown += k.writes.iter().filter(|w| matches!(w.2, Some(Kind::Unknown) | None)).count() as u64;
            let mut allowed: BTreeSet<Option<&str>> = k
                .writes
                .iter()
                .filter(|w| matches!(w.2, Some(Kind::Unknown) | None))
                .map(|w| Some(w.1.as_str()))
                .collect();
            match last_ok {
                Some(i) => allowed.insert(Some(k.writes[i].1.as_str())),
                None => allowed.insert(None),
            };
            if k.reads.is_empty() {
                bad += 1;
                r.fail(format!("{key}: never read back at the end"));
            }
            let mut seen = BTreeSet::new();
            for (node, v) in &k.reads {
                reads += 1;
                match v {
                    Err(()) => {
                        bad += 1;
                        r.fail(format!("{key}: node {node} could not be read after the cluster healed"));
                    }
                    Ok(v) => {
                        seen.insert(v.clone());
                        if !allowed.contains(&v.as_deref()) {
                            bad += 1;
                            let want =
                                last_ok.map_or("nothing".to_string(), |i| format!("`{}`", k.writes[i].1));
                            r.fail(format!(
                                "{key}: node {node} has {v:?}, last acknowledged write was {want}"
                            ));
                        }
                    }
                }
            }
            if seen.len() > 1 {
                bad += 1;
                r.fail(format!("{key}: nodes disagree at the end: {seen:?}"));
            }
        }
        r.count("keys", keys.len() as u64);
        r.count("writes_acked", acked);
        r.count("writes_unknown", unknown);
        r.count("writes_failed", failed);
        r.count("final_reads", reads);
        r.count("violations", bad);
        if acked == 0 {
            r.fail("no retained write was acknowledged: the workload did not run".into());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::ev;
    use crate::check::Verdict;

    fn w(t: u64, v: &str, k: Kind) -> Vec<Event> {
        let op = Op::Write { key: "chaos/r/0".into(), value: v.into(), node: 1 };
        vec![ev(t, "retained", Kind::Invoke, op.clone()), ev(t + 1, "retained", k, op)]
    }
    fn read(node: u64, v: Option<&str>) -> Event {
        ev(1000, "final-read", Kind::Ok, Op::Read { key: "chaos/r/0".into(), value: v.map(Into::into), node })
    }

    #[test]
    fn last_acked_value_passes_and_an_older_one_fails() {
        let mut h = [w(1, "1", Kind::Ok), w(10, "2", Kind::Ok)].concat();
        h.extend([read(1, Some("2")), read(2, Some("2"))]);
        assert_eq!(RetainedChecker.check(&h).verdict, Verdict::Pass);
        let mut stale = [w(1, "1", Kind::Ok), w(10, "2", Kind::Ok)].concat();
        stale.extend([read(1, Some("2")), read(2, Some("1"))]);
        let r = RetainedChecker.check(&stale);
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.details.iter().any(|d| d.contains("node 2")), "{:?}", r.details);
    }

    #[test]
    fn an_unknown_write_may_win_and_a_failed_one_may_not() {
        let mut h = [w(1, "1", Kind::Ok), w(10, "2", Kind::Unknown), w(20, "3", Kind::Fail)].concat();
        h.extend([read(1, Some("2")), read(2, Some("2"))]);
        assert_eq!(RetainedChecker.check(&h).verdict, Verdict::Pass);
        let mut bad = [w(1, "1", Kind::Ok), w(20, "3", Kind::Fail)].concat();
        bad.extend([read(1, Some("3"))]);
        assert_eq!(RetainedChecker.check(&bad).verdict, Verdict::Fail);
    }

    #[test]
    fn a_lost_key_or_an_unreadable_node_fails() {
        let mut h = w(1, "1", Kind::Ok);
        h.push(read(1, None));
        assert_eq!(RetainedChecker.check(&h).verdict, Verdict::Fail);
        let mut h = w(1, "1", Kind::Ok);
        h.push(ev(
            1000,
            "final-read",
            Kind::Fail,
            Op::Read { key: "chaos/r/0".into(), value: None, node: 3 },
        ));
        assert_eq!(RetainedChecker.check(&h).verdict, Verdict::Fail);
    }
}
