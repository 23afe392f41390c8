//! Liveness: after every step, and at the end, every raft group of every node was led again by a
//! live node and every node answered `/healthz` 200, within the recovery timeout (probed by the
//! nemesis from `/api/v1/cluster`; see [`crate::nemesis::probe`]). Findings the nemesis marks as
//! failed (a node that panicked on a full disk, or did not serve again after the space came back; a
//! lagging node that did not catch up) fail it too.

use super::{CheckResult, Checker};
use crate::history::{Event, Op};
use crate::nemesis::FINAL;

/// The liveness checker.
pub struct LivenessChecker;

impl Checker for LivenessChecker {
    fn name(&self) -> &'static str {
        "liveness"
    }

    fn check(&self, history: &[Event]) -> CheckResult {
        let mut r = CheckResult::new(self.name());
        let (mut faults, mut recovered, mut skipped, mut max_ms, mut final_ok) =
            (0u64, 0u64, 0u64, 0u64, None);
        for e in history {
            match &e.op {
                Op::Fault { .. } => faults += 1,
                Op::Skipped { .. } => skipped += 1,
                Op::Finding { step, node, what, failed: true } => {
                    r.fail(format!("step {}, node {node}: {what}", step + 1));
                }
                Op::Finding { step, node, what, failed: false } => {
                    r.detail(format!("step {}, node {node}: {what}", step + 1));
                }
                Op::Recovered { step, ms, recovered: ok, detail } => {
                    if *step == FINAL {
                        final_ok = Some(*ok);
                    } else if *ok {
                        recovered += 1;
                        max_ms = max_ms.max(*ms);
                    }
                    if !ok {
                        let which = if *step == FINAL {
                            "at the end".to_string()
                        } else {
                            format!("after step {}", step + 1)
                        };
                        r.fail(format!("not every group was led again {which} ({ms} ms): {detail}"));
                    }
                }
                _ => {}
            }
        }
        r.count("faults", faults);
        r.count("recovered", recovered);
        r.count("skipped_steps", skipped);
        r.count("max_recovery_ms", max_ms);
        if final_ok.is_none() {
            r.fail("no final liveness check in the history (the run did not finish)".into());
        }
        if faults == 0 {
            r.detail("no fault was injected".into());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::ev;
    use crate::check::Verdict;
    use crate::history::Kind;

    fn rec(step: usize, ok: bool) -> Event {
        ev(1, "nemesis", Kind::Info, Op::Recovered { step, ms: 1500, recovered: ok, detail: String::new() })
    }

    #[test]
    fn every_step_and_the_end_must_recover() {
        let fault = ev(0, "nemesis", Kind::Info, Op::Fault { step: 0, desc: "kill".into(), nodes: vec![1] });
        let good = vec![fault.clone(), rec(0, true), rec(FINAL, true)];
        let r = LivenessChecker.check(&good);
        assert_eq!((r.verdict, r.get("recovered"), r.get("max_recovery_ms")), (Verdict::Pass, 1, 1500));
        assert_eq!(
            LivenessChecker.check(&[fault.clone(), rec(0, false), rec(FINAL, true)]).verdict,
            Verdict::Fail
        );
        assert_eq!(LivenessChecker.check(&[fault.clone(), rec(0, true)]).verdict, Verdict::Fail);
        let finding =
            |failed| ev(2, "nemesis", Kind::Info, Op::Finding { step: 0, node: 1, what: "x".into(), failed });
        let noted = LivenessChecker.check(&[fault.clone(), finding(false), rec(0, true), rec(FINAL, true)]);
        assert_eq!((noted.verdict, noted.details.len()), (Verdict::Pass, 1));
        assert_eq!(
            LivenessChecker.check(&[fault, finding(true), rec(0, true), rec(FINAL, true)]).verdict,
            Verdict::Fail
        );
    }
}
