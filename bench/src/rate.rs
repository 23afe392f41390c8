//! Rate control: a pacer that spaces sends evenly and limits catch-up bursts.
//!
//! Pure: it is given `now` and answers when the next send is due, so it is tested without a
//! runtime. The same pacer paces publishes (per client) and connection attempts (per run).

use std::time::{Duration, Instant};

/// Spaces events at a fixed rate. A late caller may catch up, but by at most `max_burst` events.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Time between two events; `None` means unlimited (every event is due at once).
    interval: Option<Duration>,
    /// When the next event is due.
    next: Instant,
    /// How many missed events a late caller may send back to back.
    max_burst: u32,
}

impl Pacer {
    /// A pacer for `rate` events per second starting at `start`; a rate of 0 (or below) is unlimited.
    pub fn new(rate: f64, start: Instant) -> Self {
        let interval =
            if rate > 0.0 && rate.is_finite() { Some(Duration::from_secs_f64(1.0 / rate)) } else { None };
        Pacer { interval, next: start, max_burst: 10 }
    }

    /// Sets how many missed events a late caller may send back to back (at least 1).
    pub fn with_max_burst(mut self, max_burst: u32) -> Self {
        self.max_burst = max_burst.max(1);
        self
    }

    /// When the next event is due (`None` when unlimited: it is always due).
    pub fn next_due(&self) -> Option<Instant> {
        self.interval.map(|_| self.next)
    }

    /// Whether an event is due at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        self.interval.is_none() || now >= self.next
    }

    /// Records that one event was sent at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        let Some(interval) = self.interval else { return };
        self.next += interval;
        // Bound the catch-up: after this event, at most `max_burst` more are due at once.
        let lag = interval * (self.max_burst - 1);
        if let Some(floor) = now.checked_sub(lag) {
            if self.next < floor {
                self.next = floor;
            }
        }
    }
}

/// Splits a total rate over `clients` clients; 0 stays unlimited.
pub fn per_client_rate(total: f64, clients: usize) -> f64 {
    if clients == 0 || total <= 0.0 {
        0.0
    } else {
        total / clients as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as often as the pacer allows from `start` to `start + span`, stepping by `step`.
    fn count_sends(p: &mut Pacer, start: Instant, span: Duration, step: Duration) -> u32 {
        let mut n = 0;
        let mut now = start;
        while now < start + span {
            while p.is_due(now) {
                p.on_sent(now);
                n += 1;
                if n > 1_000_000 {
                    return n;
                }
            }
            now += step;
        }
        n
    }

    #[test]
    fn hundred_per_second_sends_hundred_in_a_second() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100.0, t0);
        let n = count_sends(&mut p, t0, Duration::from_secs(1), Duration::from_micros(100));
        assert_eq!(n, 100);
    }

    #[test]
    fn coarse_steps_still_reach_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000.0, t0);
        // The caller only wakes every 5 ms, i.e. 5 events late each time: it catches up.
        let n = count_sends(&mut p, t0, Duration::from_secs(2), Duration::from_millis(5));
        assert!((1995..=2000).contains(&n), "sent {n}");
    }

    #[test]
    fn a_long_stall_catches_up_by_at_most_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(100.0, t0).with_max_burst(5);
        p.on_sent(t0);
        // Stalled for 1 s (100 intervals): only 5 + the one due now may go at once.
        let late = t0 + Duration::from_secs(1);
        let mut burst = 0;
        while p.is_due(late) {
            p.on_sent(late);
            burst += 1;
        }
        assert_eq!(burst, 6);
        assert_eq!(p.next_due(), Some(late + Duration::from_millis(10)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0.0, t0);
        assert_eq!(p.next_due(), None);
        assert!(p.is_due(t0));
        p.on_sent(t0);
        assert!(p.is_due(t0));
    }

    #[test]
    fn total_rate_is_split_evenly() {
        assert_eq!(per_client_rate(1000.0, 4), 250.0);
        assert_eq!(per_client_rate(0.0, 4), 0.0);
        assert_eq!(per_client_rate(10.0, 0), 0.0);
    }
}
