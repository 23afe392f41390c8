//! Snapshots and log purges by size, next to openraft's policy by entry count.
//!
//! openraft builds a snapshot every `snapshot_every` entries and keeps `keep_behind_snapshot`
//! entries behind it. Under load an entry is a batch of up to `batch.max_bytes` (64 KiB), so those
//! counts alone let each group keep gigabytes of log, which sits in RocksDB's bottom level and is
//! rewritten by every compaction (a sixth of a node's CPU under unthrottled QoS 1). This policy
//! asks for a snapshot once `snapshot_log_bytes` were appended since the last one — or as many
//! bytes as the last snapshot had, if that is more, so that building snapshots never costs more
//! than writing the log did — and after each snapshot purges all but about `keep_behind_bytes` of
//! the log behind it.

/// What the group should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Build a snapshot.
    Snapshot,
    /// Purge the log up to and including this index (it is covered by the snapshot).
    Purge(u64),
}

/// The size policy of one group, fed with its log counters on every metrics change.
#[derive(Debug)]
pub(crate) struct LogSizePolicy {
    every_bytes: u64,
    keep_bytes: u64,
    keep_entries: u64,
    /// Appended bytes and last log index when the current snapshot was seen.
    base: (u64, u64),
    /// Appended bytes when a snapshot was last asked for.
    asked_at: Option<u64>,
    /// The current snapshot's last index; `None` before the first observation.
    snapshot: Option<Option<u64>>,
}

impl LogSizePolicy {
    pub(crate) fn new(every_bytes: u64, keep_bytes: u64, keep_entries: u64) -> Self {
        Self { every_bytes, keep_bytes, keep_entries, base: (0, 0), asked_at: None, snapshot: None }
    }

    /// `appended`: bytes appended to the log so far; `last`: the last log index; `snapshot`: the
    /// current snapshot's last index; `purged`: the last purged index; `snapshot_bytes`: the size
    /// of the latest snapshot (0 if unknown).
    pub(crate) fn observe(
        &mut self,
        appended: u64,
        last: u64,
        snapshot: Option<u64>,
        purged: Option<u64>,
        snapshot_bytes: u64,
    ) -> Option<Action> {
        let Some(current) = self.snapshot else {
            // The first observation (at start) is the baseline: the snapshot present then may be
            // old, and the size of the entries behind it is unknown.
            self.snapshot = Some(snapshot);
            self.base = (appended, last);
            return None;
        };
        if snapshot != current {
            // A snapshot was built (or installed): the log behind it may go, but for the tail
            // a slow follower can still catch up from, estimated from the recent entry size.
            let (bytes, entries) = (appended.saturating_sub(self.base.0), last.saturating_sub(self.base.1));
            let avg = (bytes / entries.max(1)).max(1);
            let keep = self.keep_entries.min(self.keep_bytes / avg);
            self.base = (appended, last);
            self.asked_at = None;
            self.snapshot = Some(snapshot);
            let upto = snapshot?.saturating_sub(keep);
            return (upto > purged.unwrap_or(0)).then_some(Action::Purge(upto));
        }
        let since = appended.saturating_sub(self.asked_at.unwrap_or(self.base.0));
        if since >= self.every_bytes.max(snapshot_bytes) {
            // Asked again after another `every_bytes` if the first request came to nothing.
            self.asked_at = Some(appended);
            return Some(Action::Snapshot);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_for_a_snapshot_every_so_many_bytes_and_again_if_none_came() {
        let mut p = LogSizePolicy::new(1000, 500, 10_000);
        assert_eq!(p.observe(0, 0, None, None, 0), None);
        assert_eq!(p.observe(999, 10, None, None, 0), None);
        assert_eq!(p.observe(1000, 11, None, None, 0), Some(Action::Snapshot));
        assert_eq!(p.observe(1500, 15, None, None, 0), None, "asked once");
        assert_eq!(p.observe(2000, 20, None, None, 0), Some(Action::Snapshot), "asked again");
    }

    #[test]
    fn a_large_state_waits_for_as_much_log_as_its_snapshot() {
        let mut p = LogSizePolicy::new(1000, 500, 10_000);
        p.observe(0, 0, Some(0), None, 5000);
        assert_eq!(p.observe(4999, 10, Some(0), None, 5000), None);
        assert_eq!(p.observe(5000, 11, Some(0), None, 5000), Some(Action::Snapshot));
    }

    #[test]
    fn purges_all_but_about_keep_bytes_behind_a_new_snapshot() {
        let mut p = LogSizePolicy::new(1000, 300, 10_000);
        // The snapshot present at start sets the baseline; nothing is purged on its account.
        assert_eq!(p.observe(0, 100, Some(90), Some(50), 0), None);
        assert_eq!(p.observe(1000, 200, Some(90), Some(50), 0), Some(Action::Snapshot));
        // 1,000 bytes over 100 entries: 10 bytes each, so 300 bytes are 30 entries.
        assert_eq!(p.observe(1000, 200, Some(195), Some(50), 0), Some(Action::Purge(165)));
        // The count bound is the smaller one here.
        let mut p = LogSizePolicy::new(1000, 1_000_000, 20);
        p.observe(0, 0, None, None, 0);
        assert_eq!(
            p.observe(5000, 100, Some(100), None, 0),
            Some(Action::Purge(80)),
            "the first snapshot too"
        );
    }

    #[test]
    fn never_purges_backwards() {
        let mut p = LogSizePolicy::new(1000, 300, 10_000);
        p.observe(0, 0, Some(0), None, 0);
        assert_eq!(p.observe(1000, 100, Some(10), Some(50), 0), None, "already purged past it");
    }
}
