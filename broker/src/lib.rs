//! ironhub-broker: the hub server (`ironhub` binary).
//!
//! Modules:
//! - [`cli`]: the command line; [`config`]: the typed configuration (defaults < file < env < flags).
//! - [`server`]: `ironhub serve`, owning the raft node, the listeners and shutdown.
//! - [`state`]: the replicated [`state::Command`] enum and its deterministic apply ([`state::HubState`]).
//! - [`http`]: the management API (`/healthz`, `/metrics`, `/api/v1`).
//! - [`ctl`]: `ironhub ctl`, a client of the API.
//! - [`mqtt`]: the MQTT wire codec ([`mqtt::codec`], vendored mqttbytes 0.6, patched).
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod ctl;
pub mod http;
pub mod mqtt;
pub mod server;
pub mod state;
