//! `sub`: subscribers only, on one filter, for `--duration`. Messages from another bench's
//! publishers are decoded (latency, sequence checks); others are only counted.

use clap::Args;

use super::{Plan, SubSpec};
use crate::cli::CommonArgs;

/// Arguments of `sub`.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Topic filter (default `PREFIX/#`; pass the other bench's `--topic-prefix`/# to listen to it).
    #[arg(long)]
    pub filter: Option<String>,
    /// Common arguments.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl SubArgs {
    /// N subscribers on one filter; no group expects anything (the publishers are elsewhere).
    pub fn plan(&self, prefix: &str) -> Plan {
        let filter = self.filter.clone().unwrap_or_else(|| format!("{prefix}/#"));
        Plan {
            subscribers: (0..self.subscribers)
                .map(|i| SubSpec { filter: filter.clone(), group: i })
                .collect(),
            groups: vec![Vec::new(); self.subscribers],
            ..Plan::default()
        }
    }
}
