//! `conn`: open N connections at `--connect-rate` and hold them for `--duration`.

use clap::Args;

use super::Plan;
use crate::cli::CommonArgs;

/// Arguments of `conn`.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Common arguments.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl ConnArgs {
    /// Idle clients only.
    pub fn plan(&self, _prefix: &str) -> Plan {
        Plan { idle: self.clients, ..Plan::default() }
    }
}
