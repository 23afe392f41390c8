//! Workloads: clients that do real operations against the cluster and record what they saw.
//!
//! - [`queue`]: QoS 1/2 publishers and persistent subscribers over MQTT (the session/reconnect
//!   workload is part of it: subscribers never re-subscribe after their first SUBACK, and some roam
//!   from node to node).
//! - [`retained`]: retained messages written through the API, read back from every node at the end.
//! - [`metrics`]: samples `ironhub_queue_dropped_total` so overflow is told apart from loss.
//!
//! Every task stops on the shared [`Stop`] signal and is awaited by the run.

pub mod metrics;
pub mod queue;
pub mod retained;

use std::time::Duration;

use tokio::sync::watch;

/// A stop signal shared by tasks: `stop()` once, every clone sees it.
#[derive(Clone)]
pub struct Stop {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Stop {
    /// A signal not yet given.
    pub fn new() -> Stop {
        let (tx, rx) = watch::channel(false);
        Stop { tx: std::sync::Arc::new(tx), rx }
    }

    /// Gives the signal.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// Whether it was given.
    pub fn is_stopped(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the signal is given.
    pub async fn stopped(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Sleeps for `d`, or less if the signal comes first; returns whether it came.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_stopped(),
            _ = self.stopped() => true,
        }
    }
}
