//! `fan-out`: few publishers on `PREFIX/fanout`, many subscribers on it; every subscriber expects
//! every message.

use clap::Args;

use super::{Plan, PubSpec, SubSpec};
use crate::cli::CommonArgs;

/// Arguments of `fan-out`.
#[derive(Debug, Clone, Args)]
pub struct FanOutArgs {
    /// Publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers (each receives everything).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Common arguments.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl FanOutArgs {
    /// N publishers to M subscribers of one topic.
    pub fn plan(&self, prefix: &str) -> Plan {
        let all: Vec<u32> = (0..self.publishers as u32).collect();
        Plan {
            subscribers: (0..self.subscribers)
                .map(|g| SubSpec { filter: format!("{prefix}/fanout"), group: g })
                .collect(),
            publishers: (0..self.publishers).map(|_| PubSpec { topic: format!("{prefix}/fanout") }).collect(),
            groups: vec![all; self.subscribers],
            ..Plan::default()
        }
    }
}
