//! `fan-in`: many publishers on `PREFIX/fanin/I`, few subscribers on `PREFIX/fanin/+`; every
//! subscriber expects every message.

use clap::Args;

use super::{Plan, PubSpec, SubSpec};
use crate::cli::CommonArgs;

/// Arguments of `fan-in`.
#[derive(Debug, Clone, Args)]
pub struct FanInArgs {
    /// Publishers.
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    /// Subscribers (each receives everything).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Common arguments.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl FanInArgs {
    /// N publishers into M wildcard subscribers.
    pub fn plan(&self, prefix: &str) -> Plan {
        let all: Vec<u32> = (0..self.publishers as u32).collect();
        Plan {
            subscribers: (0..self.subscribers)
                .map(|g| SubSpec { filter: format!("{prefix}/fanin/+"), group: g })
                .collect(),
            publishers: (0..self.publishers)
                .map(|i| PubSpec { topic: format!("{prefix}/fanin/{i}") })
                .collect(),
            groups: vec![all; self.subscribers],
            ..Plan::default()
        }
    }
}
