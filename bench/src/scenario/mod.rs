//! Scenarios: each module turns its arguments into a [`Plan`] — who connects, what each
//! subscriber subscribes to, what each publisher publishes on, and which publishers each
//! accounting group expects to hear from. The shared runner (`crate::runner`) carries out any plan,
//! so a new scenario (a device protocol's topic layout, say) is one module here.

pub mod conn;
pub mod fan_in;
pub mod fan_out;
pub mod p2p;
pub mod publish;
pub mod shared;
pub mod subscribe;

/// A subscribing client.
#[derive(Debug, Clone)]
pub struct SubSpec {
    /// Topic filter.
    pub filter: String,
    /// Accounting group: trackers of one group are merged before counting losses (one group per
    /// subscriber, except shared-subscription members, who share their group's stream).
    pub group: usize,
}

/// A publishing client.
#[derive(Debug, Clone)]
pub struct PubSpec {
    /// Topic.
    pub topic: String,
}

/// Who does what in a run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Clients that connect and hold (no traffic).
    pub idle: usize,
    /// Subscribers; they connect and subscribe before any publisher starts.
    pub subscribers: Vec<SubSpec>,
    /// Publishers; publisher `i` writes publisher id `i` into its payloads.
    pub publishers: Vec<PubSpec>,
    /// For each accounting group, the publisher ids it expects every message of.
    pub groups: Vec<Vec<u32>>,
}

impl Plan {
    /// Every connection the plan opens.
    pub fn connections(&self) -> usize {
        self.idle + self.subscribers.len() + self.publishers.len()
    }

    /// Deliveries expected when publisher `p` sent `sent[p]` messages.
    pub fn expected_deliveries(&self, sent: &[u64]) -> u64 {
        self.groups.iter().flatten().map(|&p| sent.get(p as usize).copied().unwrap_or(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_deliveries_count_each_group_once() {
        let plan = Plan { groups: vec![vec![0, 1], vec![1]], ..Plan::default() };
        assert_eq!(plan.expected_deliveries(&[10, 5]), 10 + 5 + 5);
    }
}
