//! ironhub-bench: a load generator for any MQTT broker (ironhub, mosquitto, EMQX …), so results
//! are comparable side by side.
//!
//! Module map:
//! - [`cli`]: the command line (one subcommand per scenario, `compare`).
//! - [`scenario`]: one module per scenario; each turns its arguments into a [`scenario::Plan`].
//! - [`runner`]: carries out any plan against one broker: paced connects, publishers, subscribers,
//!   drain, accounting.
//! - [`client`]: one MQTT 3.1.1 / 5 client over rumqttc.
//! - [`rate`]: the pacer behind publish and connect rates.
//! - [`payload`]: the header in every payload (publisher id, sequence number, send time).
//! - [`seq`]: lost / duplicated / out-of-order accounting per publisher.
//! - [`metrics`]: live counters and sharded HDR histograms.
//! - [`procstat`]: CPU time and the open-file limit from /proc.
//! - [`report`]: summary table, JSON, PNG plot, comparison.
//!
//! # Why rumqttc
//!
//! rumqttc (bytebeamio, Apache-2.0) is maintained, speaks MQTT 3.1.1 and 5 with QoS 0/1/2, and
//! its `AsyncClient`/`EventLoop` pair costs one tokio task, one bounded request channel and a
//! small read buffer per client, so thousands of clients fit in one process. Its TLS features are
//! off (`default-features = false`), so it adds no crypto provider. A lean client of our own over
//! a codec would save little memory and cost a second MQTT state machine to get right. Its one gap
//! for a bench: it cannot bind a source address, so `--ifaddr` (spreading clients over local
//! addresses) is not offered yet; it needs a client whose socket we create.
//!
//! Transports: MQTT over TCP only; TLS, WebSocket and QUIC are future work.

#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod metrics;
pub mod payload;
pub mod procstat;
pub mod rate;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod seq;
