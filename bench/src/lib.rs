//! ironhub-bench: a load generator for any MQTT broker (ironhub, mosquitto, EMQX …), so results
//! are comparable side by side.
//!
//! Module map:
//! - [`cli`]: the command line (one subcommand per scenario, `compare`).
//! - [`scenario`]: one module per scenario; each turns its arguments into a [`scenario::Plan`].
//! - [`runner`]: carries out any plan against one broker: paced connects, publishers, subscribers,
//!   drain, accounting.
//! - [`share`]: splitting a run over worker processes, and merging their reports.
//! - [`workers`]: runs split over worker processes: the coordinator and the worker side.
//! - [`rate`]: the pacer behind publish and connect rates.
//! - [`payload`]: the header in every payload (publisher id, sequence number, send time).
//! - [`seq`]: lost / duplicated / out-of-order accounting per publisher.
//! - [`metrics`]: live counters and sharded HDR histograms.
//! - [`procstat`]: CPU time, memory, the open-file limit and ephemeral ports from /proc, and the
//!   limits they put on a run.
//! - [`report`]: summary table, JSON, PNG plot, comparison.
//!
//! # The client
//!
//! rumqttc (bytebeamio, Apache-2.0) supplies the MQTT 3.1.1 and 5 packet codecs. Its event loop is
//! not used: it creates its own socket and cannot bind a source address (0.25 has only
//! `bind_device`, which takes a device name), so `--ifaddr` needs a socket we create. Our client
//! (crate `ironhub-client`, shared with ironhub-chaos) owns the socket, runs a small session state machine (packet ids, the QoS 1/2
//! window, QoS 2 handshakes) and costs one tokio task, one bounded request channel and a small read
//! and write buffer per connection, so thousands of clients fit in one process. Transports: TCP,
//! TLS (rustls), WebSocket and secure WebSocket (tungstenite), QUIC (quinn, one bidirectional
//! stream per MQTT connection as ironhub's QUIC listener expects).
//!
//! # Large runs
//!
//! The bench prints its limits (open files per process, ephemeral ports per source address ×
//! addresses) and the largest run they allow before it starts. Above 15,000 connections it splits
//! the run over worker processes (re-executions of this binary), each with its share of clients
//! and source addresses; their reports are merged into one result.

#![warn(missing_docs)]

pub mod cli;
pub mod metrics;
pub mod payload;
pub mod procstat;
pub mod rate;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod seq;
pub mod share;
pub mod workers;
