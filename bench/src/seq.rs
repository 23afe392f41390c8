//! Per-publisher sequence accounting: lost, duplicated and out-of-order messages.
//!
//! Every payload carries its publisher's sequence number (0, 1, 2, …). A receiver keeps one
//! [`SeqTracker`] per publisher; trackers of receivers that share a stream (members of one shared
//! subscription group) are merged with [`SeqTracker::merge`] before counting losses.

/// The largest sequence number accepted; a larger one is treated as a corrupt payload, so a bad
/// message cannot make the tracker allocate gigabytes.
pub const MAX_SEQ: u64 = 1 << 32;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time seen, in order (above every sequence number seen before).
    InOrder,
    /// First time seen, but below a sequence number already seen.
    OutOfOrder,
    /// Seen before.
    Duplicate,
    /// Above [`MAX_SEQ`]: not tracked.
    Invalid,
}

/// The sequence numbers seen from one publisher, as a bit set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqTracker {
    seen: Vec<u64>,
    highest: Option<u64>,
    unique: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl SeqTracker {
    /// Records one arrival of `seq`.
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= MAX_SEQ {
            return Arrival::Invalid;
        }
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        match self.highest {
            Some(h) if seq < h => {
                self.out_of_order += 1;
                Arrival::OutOfOrder
            }
            _ => {
                self.highest = Some(seq);
                Arrival::InOrder
            }
        }
    }

    /// Adds another receiver's view of the same stream: a number both saw is a duplicate.
    /// Out-of-order counts add up (order across receivers is not defined).
    pub fn merge(&mut self, other: &SeqTracker) {
        if other.seen.len() > self.seen.len() {
            self.seen.resize(other.seen.len(), 0);
        }
        let mut overlap = 0u64;
        for (mine, theirs) in self.seen.iter_mut().zip(&other.seen) {
            overlap += u64::from((*mine & *theirs).count_ones());
            *mine |= *theirs;
        }
        self.unique = self.unique + other.unique - overlap;
        self.duplicates += other.duplicates + overlap;
        self.out_of_order += other.out_of_order;
        self.highest = self.highest.max(other.highest);
    }

    /// Distinct sequence numbers seen.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// Arrivals of a number already seen.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// First arrivals below a number already seen.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// How many of `0..sent` were never seen.
    pub fn lost(&self, sent: u64) -> u64 {
        let sent = sent.min(MAX_SEQ);
        let full_words = (sent / 64) as usize;
        let mut seen_below = 0u64;
        for (i, w) in self.seen.iter().enumerate() {
            if i < full_words {
                seen_below += u64::from(w.count_ones());
            } else if i == full_words {
                let mask = (1u64 << (sent % 64)) - 1;
                seen_below += u64::from((w & mask).count_ones());
            }
        }
        sent - seen_below
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut t = SeqTracker::default();
        for s in 0..1000 {
            assert_eq!(t.record(s), Arrival::InOrder);
        }
        assert_eq!((t.unique(), t.duplicates(), t.out_of_order(), t.lost(1000)), (1000, 0, 0, 0));
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_each_counted() {
        let mut t = SeqTracker::default();
        let arrivals: Vec<Arrival> = [0, 1, 3, 2, 3, 5, 7, 64, 64].iter().map(|&s| t.record(s)).collect();
        use Arrival::*;
        assert_eq!(
            arrivals,
            vec![InOrder, InOrder, InOrder, OutOfOrder, Duplicate, InOrder, InOrder, InOrder, Duplicate]
        );
        // 0..66 sent: seen 0,1,2,3,5,7,64 → lost 66 - 7.
        assert_eq!(t.lost(66), 59);
        // Only 0..8 sent: lost 4 and 6; 64 is beyond what was sent and does not offset losses.
        assert_eq!(t.lost(8), 2);
        assert_eq!((t.unique(), t.duplicates(), t.out_of_order()), (7, 2, 1));
    }

    #[test]
    fn merging_disjoint_halves_of_a_shared_stream_loses_nothing() {
        let (mut a, mut b) = (SeqTracker::default(), SeqTracker::default());
        for s in 0..200 {
            if s % 2 == 0 {
                a.record(s)
            } else {
                b.record(s)
            };
        }
        a.merge(&b);
        assert_eq!((a.unique(), a.duplicates(), a.lost(200)), (200, 0, 0));
    }

    #[test]
    fn merging_overlapping_views_counts_the_overlap_as_duplicates() {
        let (mut a, mut b) = (SeqTracker::default(), SeqTracker::default());
        for s in 0..10 {
            a.record(s);
        }
        for s in 5..130 {
            b.record(s);
        }
        b.record(7);
        a.merge(&b);
        assert_eq!(a.unique(), 130);
        assert_eq!(a.duplicates(), 5 + 1);
        assert_eq!(a.lost(140), 10);
    }

    #[test]
    fn absurd_sequence_numbers_are_rejected() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(MAX_SEQ), Arrival::Invalid);
        assert_eq!(t.unique(), 0);
    }
}
