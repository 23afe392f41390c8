//! Availability: for each fault, the time from its injection to
//! - failover: every group led again among the nodes the fault spared (probed during the hold);
//! - the first write invoked after it that succeeded (an acknowledged publish or retained write);
//! - the end of the last write that did not (failed or unknown) and ended before the next fault. This
//!   includes the clients' own timeouts (5 s for a PUBACK, 2 s for an API call): a client stuck on
//!   a paused or cut-off node only gives up then.
//!
//! All are reported, never asserted (timing goals are benchmarks); the check fails only if after
//! some fault no write ever succeeded again.

use super::{CheckResult, Checker};
use crate::history::{Event, Kind, Op};

/// The availability checker.
pub struct AvailabilityChecker;

/// Per fault: (step, desc, ms to the first success or None, ms to the end of the last failure).
pub type FaultAvailability = (usize, String, Option<u64>, u64);

/// Computes the per-fault numbers.
pub fn per_fault(history: &[Event]) -> Vec<FaultAvailability> {
    let faults: Vec<(u64, usize, String)> = history
        .iter()
        .filter_map(|e| match &e.op {
            Op::Fault { step, desc, .. } => Some((e.t_ms, *step, desc.clone())),
            _ => None,
        })
        .collect();
    // (invoke time, completion time, ok?)
    let writes: Vec<(u64, u64, bool)> = history
        .iter()
        .filter(|e| matches!(e.op, Op::Publish { .. } | Op::Write { .. }))
        .filter(|e| matches!(e.kind, Kind::Ok | Kind::Fail | Kind::Unknown))
        .map(|e| (e.t_ms.saturating_sub(e.latency_ms.unwrap_or(0)), e.t_ms, e.kind == Kind::Ok))
        .collect();
    let mut out = Vec::new();
    for (i, (t, step, desc)) in faults.iter().enumerate() {
        let until = faults.get(i + 1).map_or(u64::MAX, |f| f.0);
        let first_ok = writes.iter().filter(|w| w.2 && w.0 >= *t).map(|w| w.1 - t).min();
        let last_bad =
            writes.iter().filter(|w| !w.2 && w.1 >= *t && w.1 < until).map(|w| w.1 - t).max().unwrap_or(0);
        out.push((*step, desc.clone(), first_ok, last_bad));
    }
    out
}

impl Checker for AvailabilityChecker {
    fn name(&self) -> &'static str {
        "availability"
    }

    fn check(&self, history: &[Event]) -> CheckResult {
        let mut r = CheckResult::new(self.name());
        let rows = per_fault(history);
        let mut worst_first = 0;
        let mut worst_window = 0;
        let mut over_3s = 0;
        let failovers: Vec<(usize, u64, bool)> = history
            .iter()
            .filter_map(|e| match e.op {
                Op::Failover { step, ms, within_hold } => Some((step, ms, within_hold)),
                _ => None,
            })
            .collect();
        let max_failover = failovers.iter().filter(|f| f.2).map(|f| f.1).max().unwrap_or(0);
        let failover_over_3s = failovers.iter().filter(|f| !f.2 || f.1 > 3000).count() as u64;
        for (step, desc, first, window) in &rows {
            match first {
                Some(ms) => {
                    worst_first = worst_first.max(*ms);
                    let fo = failovers.iter().find(|f| f.0 == *step).map_or(String::new(), |f| {
                        if f.2 {
                            format!("groups led again after {} ms, ", f.1)
                        } else {
                            format!("groups not all led again during the {} ms hold, ", f.1)
                        }
                    });
                    r.detail(format!(
                        "step {}: {desc}: {fo}first write ok after {ms} ms, last failed write ended after {window} ms",
                        step + 1
                    ));
                }
                None => r.fail(format!("step {}: {desc}: no write succeeded after it", step + 1)),
            }
            worst_window = worst_window.max(*window);
            if *window > 3000 {
                over_3s += 1;
            }
        }
        r.count("faults", rows.len() as u64);
        r.count("max_ms_to_first_ok_write", worst_first);
        r.count("max_ms_to_last_failed_write", worst_window);
        r.count("faults_with_failed_writes_over_3s", over_3s);
        r.count("max_failover_ms", max_failover);
        r.count("failovers_over_3s", failover_over_3s);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::*;
    use crate::check::Verdict;

    #[test]
    fn measures_first_success_and_refusal_window() {
        let mut h =
            vec![ev(100, "nemesis", Kind::Info, Op::Fault { step: 0, desc: "kill".into(), nodes: vec![1] })];
        h.extend(publish(90, 0, 1, Kind::Unknown)); // invoked before, ends at 95: not after the fault
        h.extend(publish(200, 0, 2, Kind::Unknown)); // ends at 205
        h.extend(publish(1200, 0, 3, Kind::Ok)); // ends at 1205
        let rows = per_fault(&h);
        assert_eq!(rows, vec![(0, "kill".to_string(), Some(1105), 105)]);
        assert_eq!(AvailabilityChecker.check(&h).verdict, Verdict::Pass);
        h.push(ev(1900, "nemesis", Kind::Info, Op::Failover { step: 0, ms: 1800, within_hold: true }));
        let r = AvailabilityChecker.check(&h);
        assert_eq!((r.get("max_failover_ms"), r.get("failovers_over_3s")), (1800, 0));
        assert!(r.details[0].contains("groups led again after 1800 ms"), "{:?}", r.details);
        h.truncate(3);
        assert_eq!(AvailabilityChecker.check(&h).verdict, Verdict::Fail);
    }

    #[test]
    fn a_failure_belongs_to_the_fault_in_whose_window_it_ended() {
        let f = |t, step| {
            ev(t, "nemesis", Kind::Info, Op::Fault { step, desc: format!("f{step}"), nodes: vec![1] })
        };
        let mut h = vec![f(0, 0), f(1000, 1)];
        h.extend(publish(990, 0, 1, Kind::Unknown)); // invoked in window 0, ends at 995: window 0
        h.extend(publish(998, 0, 2, Kind::Unknown)); // ends at 1003, after fault 1: window 1
        h.extend(publish(1100, 0, 3, Kind::Ok));
        let rows = per_fault(&h);
        assert_eq!(rows[0].3, 995);
        assert_eq!(rows[1].3, 3);
    }
}
