//! Persistent sessions survive reconnects: every reconnect of a subscriber (clean session 0) after
//! its first SUBACK must find its session (CONNACK session present = 1). A reconnect that finds no
//! session is a lost session (FAIL); the queue checker then also sees what it missed.

use std::collections::BTreeMap;

use super::{CheckResult, Checker};
use crate::history::{Event, Kind, Op};

/// The session checker.
pub struct SessionChecker;

impl Checker for SessionChecker {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn check(&self, history: &[Event]) -> CheckResult {
        let mut r = CheckResult::new(self.name());
        let mut subscribed: BTreeMap<&str, bool> = BTreeMap::new();
        let (mut reconnects, mut resumed, mut lost, mut moved) = (0u64, 0u64, 0u64, 0u64);
        let mut last_node: BTreeMap<&str, u64> = BTreeMap::new();
        for e in history {
            match (&e.op, e.kind) {
                (Op::Subscribe { .. }, Kind::Ok) => {
                    subscribed.insert(&e.process, true);
                }
                (Op::Connect { node, clean: false, session_present }, Kind::Ok) => {
                    if subscribed.get(e.process.as_str()).copied().unwrap_or(false) {
                        reconnects += 1;
                        if last_node.get(e.process.as_str()).is_some_and(|n| n != node) {
                            moved += 1;
                        }
                        if *session_present {
                            resumed += 1;
                        } else {
                            lost += 1;
                            r.fail(format!(
                                "{} reconnected to node {node} at {} ms and its session was gone",
                                e.process, e.t_ms
                            ));
                        }
                    }
                    last_node.insert(&e.process, *node);
                }
                _ => {}
            }
        }
        r.count("persistent_clients", subscribed.len() as u64);
        r.count("reconnects", reconnects);
        r.count("reconnects_to_another_node", moved);
        r.count("sessions_resumed", resumed);
        r.count("sessions_lost", lost);
        if subscribed.is_empty() {
            r.fail("no persistent subscriber ever subscribed".into());
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::*;
    use crate::check::Verdict;

    fn connect(t: u64, node: u64, sp: bool) -> Event {
        ev(t, "sub-0", Kind::Ok, Op::Connect { node, clean: false, session_present: sp })
    }

    #[test]
    fn resumed_sessions_pass_and_a_lost_one_fails() {
        let ok =
            vec![connect(0, 1, false), subscribed(1, "sub-0"), connect(50, 2, true), connect(90, 3, true)];
        let r = SessionChecker.check(&ok);
        assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
        assert_eq!(
            (r.get("reconnects"), r.get("sessions_resumed"), r.get("reconnects_to_another_node")),
            (2, 2, 2)
        );
        let mut bad = ok.clone();
        bad.push(connect(120, 1, false));
        let r = SessionChecker.check(&bad);
        assert_eq!((r.verdict, r.get("sessions_lost")), (Verdict::Fail, 1));
    }
}
