//! Splitting a run across worker processes and merging what they measured.
//!
//! [`split`] gives each process its [`Share`] of the plan: a range of idle clients, whole
//! accounting groups of subscribers (a shared-subscription group never spans processes, so its
//! members' sequence trackers are merged locally), a range of publishers and its source addresses.
//! Publisher ids stay global, so a subscriber in one process attributes a message from a publisher
//! in another.
//!
//! Each process returns a [`Report`] (counters, HDR histograms as value/count pairs, per-group
//! sequence summaries, sent counts, timeline). [`merge`] sums them into one; `finish` in
//! `crate::runner` turns the merged report into the run's result. A single-process run is one
//! share and one report, so both paths share the same accounting.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::metrics::{merge_into, new_histogram};
use crate::report::Sample;
use crate::scenario::Plan;
use crate::seq::SeqTracker;

/// Above this many connections a run is split across worker processes by default.
pub const CONNECTIONS_PER_WORKER: usize = 15_000;

/// Which clients of a plan one process runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Share {
    /// Idle client indices.
    pub idle: Range<usize>,
    /// Subscriber indices (whole accounting groups).
    pub subscribers: Vec<usize>,
    /// Publisher ids.
    pub publishers: Range<usize>,
    /// Source addresses this process connects from (empty: any).
    pub sources: Vec<IpAddr>,
}

impl Share {
    /// The whole plan in one process.
    pub fn all(plan: &Plan, sources: &[IpAddr]) -> Self {
        Share {
            idle: 0..plan.idle,
            subscribers: (0..plan.subscribers.len()).collect(),
            publishers: 0..plan.publishers.len(),
            sources: sources.to_vec(),
        }
    }

    /// Connections this share opens.
    pub fn connections(&self) -> usize {
        self.idle.len() + self.subscribers.len() + self.publishers.len()
    }

    /// Deliveries this share's subscribers should receive, given every publisher's sent count.
    pub fn expected_deliveries(&self, plan: &Plan, sent: &BTreeMap<u32, u64>) -> u64 {
        let mut groups: Vec<usize> = self.subscribers.iter().map(|&i| plan.subscribers[i].group).collect();
        groups.sort_unstable();
        groups.dedup();
        groups
            .iter()
            .filter_map(|g| plan.groups.get(*g))
            .flatten()
            .map(|p| sent.get(p).copied().unwrap_or(0))
            .sum()
    }
}

/// How many worker processes a run of `connections` uses: `requested` if not 0, else one per
/// [`CONNECTIONS_PER_WORKER`] started.
pub fn worker_count(connections: usize, requested: usize) -> usize {
    if requested > 0 {
        requested
    } else {
        connections.div_ceil(CONNECTIONS_PER_WORKER).max(1)
    }
}

fn even(n: usize, workers: usize, k: usize) -> Range<usize> {
    let (base, extra) = (n / workers, n % workers);
    let start = k * base + k.min(extra);
    start..start + base + usize::from(k < extra)
}

/// Splits `plan` over `workers` processes (at least 1).
pub fn split(plan: &Plan, sources: &[IpAddr], workers: usize) -> Vec<Share> {
    let w = workers.max(1);
    let mut shares: Vec<Share> = (0..w)
        .map(|k| Share {
            idle: even(plan.idle, w, k),
            subscribers: Vec::new(),
            publishers: even(plan.publishers.len(), w, k),
            sources: if sources.len() >= w {
                sources.iter().skip(k).step_by(w).copied().collect()
            } else {
                sources.to_vec()
            },
        })
        .collect();
    // Whole groups, in order, each to the share with the fewest subscribers so far.
    let mut by_group: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, s) in plan.subscribers.iter().enumerate() {
        by_group.entry(s.group).or_default().push(i);
    }
    for members in by_group.into_values() {
        let k = (0..w).min_by_key(|&k| (shares[k].subscribers.len(), k)).unwrap_or(0);
        shares[k].subscribers.extend(members);
    }
    for s in &mut shares {
        s.subscribers.sort_unstable();
    }
    shares
}

/// One receiver group's view of one publisher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqSummary {
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Repeated arrivals.
    pub duplicates: u64,
    /// First arrivals below a number already seen.
    pub out_of_order: u64,
}

impl From<&SeqTracker> for SeqSummary {
    fn from(t: &SeqTracker) -> Self {
        SeqSummary { unique: t.unique(), duplicates: t.duplicates(), out_of_order: t.out_of_order() }
    }
}

/// A histogram as (value, count) pairs, for the trip between processes.
pub fn hist_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

/// The histogram of (value, count) pairs.
pub fn hist_from_pairs(pairs: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_histogram();
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
    h
}

/// What one process measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Messages sent per publisher id.
    pub sent: BTreeMap<u32, u64>,
    /// Per accounting group, per publisher id: what the group received.
    pub groups: BTreeMap<usize, BTreeMap<u32, SeqSummary>>,
    /// Publishes acknowledged (QoS 0: written).
    pub acked: u64,
    /// Messages received.
    pub received: u64,
    /// Connections attempted.
    pub connect_attempts: u64,
    /// Connections that got CONNACK.
    pub connected: u64,
    /// Latency histogram, µs, as (value, count).
    pub latency: Vec<(u64, u64)>,
    /// Connect latency histogram, µs, as (value, count).
    pub connect_latency: Vec<(u64, u64)>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first message of each error kind.
    pub error_examples: BTreeMap<String, String>,
    /// Seconds from the first connect until every client of this process was ready.
    pub connect_phase_s: f64,
    /// Seconds from the start signal until every publisher of this process stopped.
    pub publish_s: f64,
    /// CPU seconds used by this process during the run.
    pub cpu_s: Option<f64>,
    /// One sample per second.
    pub timeline: Vec<Sample>,
}

/// Sums reports of the processes of one run. Counters and histograms add up; durations take the
/// longest; timelines add up second by second (per-second latency percentiles take the worst
/// process, an upper bound).
pub fn merge(reports: Vec<Report>) -> Report {
    let mut out = Report::default();
    let mut lat = new_histogram();
    let mut conn = new_histogram();
    let mut cpu = Some(0.0);
    for r in reports {
        for (p, n) in r.sent {
            *out.sent.entry(p).or_insert(0) += n;
        }
        for (g, pubs) in r.groups {
            let into = out.groups.entry(g).or_default();
            for (p, s) in pubs {
                let e = into.entry(p).or_default();
                e.unique += s.unique;
                e.duplicates += s.duplicates;
                e.out_of_order += s.out_of_order;
            }
        }
        out.acked += r.acked;
        out.received += r.received;
        out.connect_attempts += r.connect_attempts;
        out.connected += r.connected;
        merge_into(&mut lat, &hist_from_pairs(&r.latency));
        merge_into(&mut conn, &hist_from_pairs(&r.connect_latency));
        for (k, n) in r.errors {
            *out.errors.entry(k).or_insert(0) += n;
        }
        for (k, d) in r.error_examples {
            out.error_examples.entry(k).or_insert(d);
        }
        out.connect_phase_s = out.connect_phase_s.max(r.connect_phase_s);
        out.publish_s = out.publish_s.max(r.publish_s);
        cpu = match (cpu, r.cpu_s) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        for (i, s) in r.timeline.into_iter().enumerate() {
            match out.timeline.get_mut(i) {
                None => out.timeline.push(s),
                Some(t) => {
                    t.out_per_s += s.out_per_s;
                    t.in_per_s += s.in_per_s;
                    t.connects_per_s += s.connects_per_s;
                    t.open += s.open;
                    t.p50_us = t.p50_us.max(s.p50_us);
                    t.p99_us = t.p99_us.max(s.p99_us);
                }
            }
        }
    }
    out.latency = hist_to_pairs(&lat);
    out.connect_latency = hist_to_pairs(&conn);
    out.cpu_s = cpu;
    out
}

/// Lost, duplicated and out-of-order messages of a merged report against the plan: for each
/// group, every message of every publisher it expects should have arrived once.
pub fn accounting(plan: &Plan, r: &Report) -> (u64, u64, u64) {
    let (mut lost, mut dup, mut ooo) = (0u64, 0u64, 0u64);
    for (g, expects) in plan.groups.iter().enumerate() {
        let seen = r.groups.get(&g);
        for p in expects {
            let sent = r.sent.get(p).copied().unwrap_or(0);
            // Publishers number their messages 0..sent, so what is not unique is lost.
            let unique = seen.and_then(|s| s.get(p)).map(|s| s.unique).unwrap_or(0);
            lost += sent.saturating_sub(unique);
        }
        for s in seen.into_iter().flat_map(|s| s.values()) {
            dup += s.duplicates;
            ooo += s.out_of_order;
        }
    }
    (lost, dup, ooo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Percentiles;
    use crate::scenario::{PubSpec, SubSpec};

    fn plan(idle: usize, groups_of: &[usize], publishers: usize) -> Plan {
        let mut subscribers = Vec::new();
        for (g, &n) in groups_of.iter().enumerate() {
            for _ in 0..n {
                subscribers.push(SubSpec { filter: format!("t/{g}"), group: g });
            }
        }
        Plan {
            idle,
            subscribers,
            publishers: (0..publishers).map(|i| PubSpec { topic: format!("t/{i}") }).collect(),
            groups: groups_of.iter().enumerate().map(|(g, _)| vec![g as u32]).collect(),
        }
    }

    #[test]
    fn worker_count_is_one_per_15k_connections_unless_asked() {
        assert_eq!(worker_count(100, 0), 1);
        assert_eq!(worker_count(15_000, 0), 1);
        assert_eq!(worker_count(15_001, 0), 2);
        assert_eq!(worker_count(20_000, 0), 2);
        assert_eq!(worker_count(100, 3), 3);
    }

    #[test]
    fn split_covers_every_client_once_and_keeps_groups_whole() {
        // 10 idle, 5 groups: four single subscribers and one shared group of 4, 7 publishers.
        let p = plan(10, &[1, 1, 4, 1, 1], 7);
        let addrs: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        let shares = split(&p, &addrs, 2);
        assert_eq!(shares.len(), 2);
        assert_eq!((shares[0].idle.clone(), shares[1].idle.clone()), (0..5, 5..10));
        assert_eq!((shares[0].publishers.clone(), shares[1].publishers.clone()), (0..4, 4..7));
        let mut all: Vec<usize> = shares.iter().flat_map(|s| s.subscribers.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        for g in 0..5 {
            let owners: Vec<usize> = (0..2)
                .filter(|&k| shares[k].subscribers.iter().any(|&i| p.subscribers[i].group == g))
                .collect();
            assert_eq!(owners.len(), 1, "group {g} in one share");
        }
        // greedy: g0 -> 0, g1 -> 1, g2 (4) -> 0, g3 -> 1, g4 -> 1
        assert_eq!(shares[0].subscribers, vec![0, 2, 3, 4, 5]);
        assert_eq!(shares[1].subscribers, vec![1, 6, 7]);
        assert_eq!(shares[0].sources, vec![addrs[0], addrs[2]]);
        assert_eq!(shares[1].sources, vec![addrs[1], addrs[3]]);
        assert_eq!(shares.iter().map(Share::connections).sum::<usize>(), p.connections());
        // fewer addresses than workers: every worker uses them all
        assert_eq!(split(&p, &addrs[..1], 3)[2].sources, vec![addrs[0]]);
        assert_eq!(split(&p, &[], 1)[0], Share::all(&p, &[]));
    }

    #[test]
    fn expected_deliveries_count_only_the_shares_groups() {
        let p = plan(0, &[1, 1, 2], 3);
        let shares = split(&p, &[], 2);
        let sent: BTreeMap<u32, u64> = [(0, 10), (1, 20), (2, 30)].into();
        let total: u64 = shares.iter().map(|s| s.expected_deliveries(&p, &sent)).sum();
        assert_eq!(total, 60, "each group expects its publisher's messages once");
    }

    #[test]
    fn merged_reports_sum_counters_and_histograms() {
        let mut h1 = new_histogram();
        let mut h2 = new_histogram();
        let mut single = new_histogram();
        for v in 1..=1000u64 {
            h1.record(v).unwrap_or(());
            single.record(v).unwrap_or(());
        }
        for v in 1001..=3000u64 {
            h2.record(v).unwrap_or(());
            single.record(v).unwrap_or(());
        }
        let sample = |open| Sample {
            t_s: 1.0,
            out_per_s: 10.0,
            in_per_s: 5.0,
            connects_per_s: 0.0,
            open,
            p50_us: open * 100,
            p99_us: open * 1000,
        };
        let a = Report {
            sent: [(0, 100)].into(),
            groups: [(0, [(1, SeqSummary { unique: 50, duplicates: 1, out_of_order: 2 })].into())].into(),
            acked: 100,
            received: 51,
            connected: 2,
            connect_attempts: 2,
            latency: hist_to_pairs(&h1),
            errors: [("io".to_string(), 1)].into(),
            connect_phase_s: 1.0,
            publish_s: 10.0,
            cpu_s: Some(1.5),
            timeline: vec![sample(2), sample(2)],
            ..Report::default()
        };
        let b = Report {
            sent: [(1, 60)].into(),
            groups: [(1, [(0, SeqSummary { unique: 100, duplicates: 0, out_of_order: 0 })].into())].into(),
            acked: 60,
            received: 100,
            connected: 3,
            connect_attempts: 4,
            latency: hist_to_pairs(&h2),
            errors: [("io".to_string(), 2), ("timeout".to_string(), 1)].into(),
            connect_phase_s: 2.5,
            publish_s: 9.0,
            cpu_s: Some(2.0),
            timeline: vec![sample(3)],
            ..Report::default()
        };
        let m = merge(vec![a, b]);
        assert_eq!(m.sent, [(0, 100), (1, 60)].into());
        assert_eq!((m.acked, m.received, m.connected, m.connect_attempts), (160, 151, 5, 6));
        assert_eq!(m.errors, [("io".to_string(), 3), ("timeout".to_string(), 1)].into());
        assert_eq!((m.connect_phase_s, m.publish_s, m.cpu_s), (2.5, 10.0, Some(3.5)));
        assert_eq!(Percentiles::of(&hist_from_pairs(&m.latency)), Percentiles::of(&single));
        assert_eq!(m.timeline.len(), 2);
        assert_eq!((m.timeline[0].open, m.timeline[0].out_per_s, m.timeline[0].p99_us), (5, 20.0, 3000));
        assert_eq!(m.timeline[1].open, 2);

        // group 0 expects publisher 1 (60 sent, 50 seen), group 1 expects publisher 0 (100 of 100)
        let p = Plan { groups: vec![vec![1], vec![0]], ..Plan::default() };
        assert_eq!(accounting(&p, &m), (10, 1, 2));
    }

    #[test]
    fn histogram_pairs_round_trip() {
        let mut h = new_histogram();
        for v in [1u64, 5, 5, 1_000, 2_000_000] {
            h.record(v).unwrap_or(());
        }
        let back = hist_from_pairs(&hist_to_pairs(&h));
        assert_eq!(Percentiles::of(&back), Percentiles::of(&h));
    }
}
