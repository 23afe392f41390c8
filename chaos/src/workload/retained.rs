//! Retained messages through the API: one writer sets `chaos/r/<k>` round-robin over the keys to
//! increasing values, moving to the next node after any failure; at the end every key is read from
//! every node. Writes are register writes in the history ([`Op::Write`] / [`Op::Read`]), so the
//! retained checker is a last-write check on a register.

use std::time::{Duration, Instant};

use crate::api::{Api, WriteOutcome};
use crate::backend::NodeEndpoints;
use crate::history::{Kind, Op, Recorder};
use crate::workload::Stop;

/// The topic of key `k`.
pub fn topic(k: usize) -> String {
    format!("chaos/r/{k}")
}

/// Writes at `rate` per second until stopped.
pub async fn run(api: Api, nodes: Vec<NodeEndpoints>, keys: usize, rate: u32, rec: Recorder, stop: Stop) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut cur = 0usize;
    let mut n: u64 = 0;
    let mut next = Instant::now();
    while !stop.is_stopped() {
        n += 1;
        let key = topic((n as usize - 1) % keys);
        let value = n.to_string();
        let node = &nodes[cur % nodes.len()];
        let op = Op::Write { key: key.clone(), value: value.clone(), node: node.id };
        rec.record("retained", Kind::Invoke, op.clone());
        let t0 = Instant::now();
        let outcome = api.put_retained(&node.api, &key, &value).await;
        let ms = Some(t0.elapsed().as_millis() as u64);
        match outcome {
            WriteOutcome::Ok => rec.record_with_latency("retained", Kind::Ok, op, ms),
            WriteOutcome::Fail(_) => {
                rec.record_with_latency("retained", Kind::Fail, op, ms);
                cur += 1;
            }
            WriteOutcome::Unknown(_) => {
                rec.record_with_latency("retained", Kind::Unknown, op, ms);
                cur += 1;
            }
        }
        next += period;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        if stop.sleep(next - now).await {
            break;
        }
    }
}

/// Reads every key from every node (after the cluster healed), retrying a node for a few seconds.
pub async fn final_reads(api: &Api, nodes: &[NodeEndpoints], keys: usize, rec: &Recorder) {
    for k in 0..keys {
        let key = topic(k);
        for n in nodes {
            let mut tries = 0;
            loop {
                tries += 1;
                match api.get_retained(&n.api, &key).await {
                    Ok(value) => {
                        rec.record("final-read", Kind::Ok, Op::Read { key: key.clone(), value, node: n.id });
                        break;
                    }
                    Err(_) if tries < 20 => tokio::time::sleep(Duration::from_millis(250)).await,
                    Err(_) => {
                        rec.record(
                            "final-read",
                            Kind::Fail,
                            Op::Read { key: key.clone(), value: None, node: n.id },
                        );
                        break;
                    }
                }
            }
        }
    }
}
