//! `pub`: publishers only, each on `PREFIX/pub/I` (nobody subscribes, so nothing is received).

use clap::Args;

use super::{Plan, PubSpec};
use crate::cli::CommonArgs;

/// Arguments of `pub`.
#[derive(Debug, Clone, Args)]
pub struct PubArgs {
    /// Publishers.
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Common arguments.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl PubArgs {
    /// N publishers on their own topics.
    pub fn plan(&self, prefix: &str) -> Plan {
        Plan {
            publishers: (0..self.publishers)
                .map(|i| PubSpec { topic: format!("{prefix}/pub/{i}") })
                .collect(),
            ..Plan::default()
        }
    }
}
