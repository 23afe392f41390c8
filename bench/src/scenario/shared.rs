//! `shared`: subscribers spread over G shared-subscription groups (`$share/gK/PREFIX/shared`);
//! each message goes to one member of every group, so losses are counted per group (the members'
//! sequence trackers are merged; a message two members both got is a duplicate).

use clap::Args;

use super::{Plan, PubSpec, SubSpec};
use crate::cli::CommonArgs;

/// Arguments of `shared`.
#[derive(Debug, Clone, Args)]
pub struct SharedArgs {
    /// Publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers, spread round-robin over the groups.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Shared-subscription groups.
    #[arg(long, default_value_t = 1)]
    pub groups: usize,
    /// Common arguments.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl SharedArgs {
    /// Members of G groups, each group expecting every message once.
    pub fn plan(&self, prefix: &str) -> Plan {
        let groups = self.groups.clamp(1, self.subscribers.max(1));
        let all: Vec<u32> = (0..self.publishers as u32).collect();
        Plan {
            subscribers: (0..self.subscribers)
                .map(|i| SubSpec {
                    filter: format!("$share/g{}/{prefix}/shared", i % groups),
                    group: i % groups,
                })
                .collect(),
            publishers: (0..self.publishers).map(|_| PubSpec { topic: format!("{prefix}/shared") }).collect(),
            groups: if self.subscribers == 0 { Vec::new() } else { vec![all; groups] },
            ..Plan::default()
        }
    }
}
