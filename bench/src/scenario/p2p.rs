//! `p2p`: N pairs; publisher I publishes on `PREFIX/p2p/I`, subscriber I subscribes to exactly it.

use clap::Args;

use super::{Plan, PubSpec, SubSpec};
use crate::cli::CommonArgs;

/// Arguments of `p2p`.
#[derive(Debug, Clone, Args)]
pub struct P2pArgs {
    /// Publisher/subscriber pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Common arguments.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl P2pArgs {
    /// One topic per pair.
    pub fn plan(&self, prefix: &str) -> Plan {
        Plan {
            subscribers: (0..self.pairs)
                .map(|i| SubSpec { filter: format!("{prefix}/p2p/{i}"), group: i })
                .collect(),
            publishers: (0..self.pairs).map(|i| PubSpec { topic: format!("{prefix}/p2p/{i}") }).collect(),
            groups: (0..self.pairs as u32).map(|i| vec![i]).collect(),
            ..Plan::default()
        }
    }
}
