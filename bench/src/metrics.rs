//! Shared measurements of one run: live counters, latency and connect-time histograms, errors.
//!
//! Latency samples go to one of [`LATENCY_SHARDS`] mutex-guarded histogram pairs (picked by the
//! receiving client's index), so thousands of receivers do not contend on one lock. Each shard keeps a
//! whole-run histogram and an interval histogram that the one-second sampler drains for the timeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Number of latency histogram shards.
pub const LATENCY_SHARDS: usize = 16;

/// Largest value a histogram tracks: one hour in µs (larger values are clamped).
const HIST_MAX_US: u64 = 3_600_000_000;

/// A new histogram in µs, 1 µs to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, HIST_MAX_US, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts; fall back to auto-resizing anyway.
        Err(_) => Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid")),
    }
}

/// Adds `from` into `into`; both come from [`new_histogram`], so this cannot overflow the bounds.
pub fn merge_into(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Same bounds on both sides; `add` only fails when `from` holds values `into` cannot.
    let _ = into.add(from);
}

/// Counters read by the live progress line and the sampler.
#[derive(Debug, Default)]
pub struct Live {
    /// Publishes handed to the client.
    pub sent: AtomicU64,
    /// Publishes acknowledged by the broker (PUBACK / PUBCOMP; QoS 0 counts at send).
    pub acked: AtomicU64,
    /// Publishes received by subscribers.
    pub received: AtomicU64,
    /// Connections attempted.
    pub connect_attempts: AtomicU64,
    /// Connections that got a successful CONNACK.
    pub connected: AtomicU64,
    /// Connections currently open.
    pub open: AtomicU64,
    /// Errors of every kind.
    pub errors: AtomicU64,
}

impl Live {
    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Adds to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct LatencyShard {
    total: Histogram<u64>,
    interval: Histogram<u64>,
}

/// All measurements of one run, shared by every client task.
#[derive(Debug)]
pub struct Metrics {
    /// Live counters.
    pub live: Live,
    latency: Vec<Mutex<LatencyShard>>,
    connect: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    /// The first message of each error kind.
    examples: Mutex<BTreeMap<String, String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            live: Live::default(),
            latency: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(LatencyShard { total: new_histogram(), interval: new_histogram() }))
                .collect(),
            connect: Mutex::new(new_histogram()),
            errors: Mutex::new(BTreeMap::new()),
            examples: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    /// Records one publish-to-receive latency, measured by client number `client`.
    pub fn record_latency(&self, client: usize, latency_us: u64) {
        let mut shard = self.latency[client % LATENCY_SHARDS].lock();
        shard.total.saturating_record(latency_us.max(1));
        shard.interval.saturating_record(latency_us.max(1));
    }

    /// Records one connect latency (TCP connect to CONNACK).
    pub fn record_connect(&self, took: Duration) {
        self.connect.lock().saturating_record((took.as_micros() as u64).max(1));
    }

    /// Counts one error of kind `kind` (a short stable name such as `connect_refused`).
    pub fn record_error(&self, kind: &str) {
        Live::add(&self.live.errors, 1);
        *self.errors.lock().entry(kind.to_string()).or_insert(0) += 1;
    }

    /// Counts one error of kind `kind`, keeping `detail` if it is the first of its kind.
    pub fn record_error_detail(&self, kind: &str, detail: &str) {
        self.record_error(kind);
        self.examples.lock().entry(kind.to_string()).or_insert_with(|| detail.to_string());
    }

    /// The first message of each error kind.
    pub fn error_examples(&self) -> BTreeMap<String, String> {
        self.examples.lock().clone()
    }

    /// The latency histogram of the whole run so far (all shards merged).
    pub fn latency_total(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.latency {
            merge_into(&mut h, &s.lock().total);
        }
        h
    }

    /// The latency histogram since the last call (all shards merged), resetting the interval.
    pub fn take_latency_interval(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.latency {
            let mut s = s.lock();
            merge_into(&mut h, &s.interval);
            s.interval.reset();
        }
        h
    }

    /// The connect latency histogram.
    pub fn connect_hist(&self) -> Histogram<u64> {
        self.connect.lock().clone()
    }

    /// Errors by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }
}

/// Percentiles of a histogram in µs, as reported.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest sample, µs.
    pub max_us: u64,
}

impl Percentiles {
    /// Summarises `h` (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_the_same_percentiles_as_one_histogram() {
        let m = Metrics::default();
        let mut single = new_histogram();
        for i in 1..=10_000u64 {
            m.record_latency(i as usize, i);
            single.record(i).unwrap_or(());
        }
        let merged = m.latency_total();
        assert_eq!(Percentiles::of(&merged), Percentiles::of(&single));
        let p = Percentiles::of(&merged);
        assert_eq!(p.count, 10_000);
        assert!((4990..=5010).contains(&p.p50_us), "p50 {}", p.p50_us);
        assert!((9890..=9910).contains(&p.p99_us), "p99 {}", p.p99_us);
        assert_eq!(p.max_us, merged.max());
        assert!(p.max_us >= 10_000 && p.max_us <= 10_010);
    }

    #[test]
    fn interval_is_drained_but_total_keeps_everything() {
        let m = Metrics::default();
        m.record_latency(0, 100);
        m.record_latency(1, 200);
        assert_eq!(m.take_latency_interval().len(), 2);
        m.record_latency(2, 300);
        assert_eq!(m.take_latency_interval().len(), 1);
        assert_eq!(m.take_latency_interval().len(), 0);
        assert_eq!(m.latency_total().len(), 3);
    }

    #[test]
    fn oversize_values_are_clamped_not_dropped() {
        let m = Metrics::default();
        m.record_latency(0, u64::MAX);
        assert_eq!(m.latency_total().len(), 1);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let m = Metrics::default();
        m.record_error("io");
        m.record_error("io");
        m.record_error("refused");
        assert_eq!(Live::get(&m.live.errors), 3);
        assert_eq!(m.errors().get("io"), Some(&2));
    }
}
