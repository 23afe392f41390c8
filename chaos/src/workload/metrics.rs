//! Samples `ironhub_queue_dropped_total` on every node every two seconds (and once at the end), and
//! records a [`Op::Dropped`] event whenever a node's value changes (including the first sample).

use std::collections::HashMap;
use std::time::Duration;

use crate::api::Api;
use crate::backend::NodeEndpoints;
use crate::history::{Kind, Op, Recorder};
use crate::workload::Stop;

/// One pass over the nodes; unreachable nodes are skipped.
pub async fn sample(api: &Api, nodes: &[NodeEndpoints], rec: &Recorder, last: &mut HashMap<u64, (u64, u64)>) {
    for n in nodes {
        if let Ok(v) = api.queue_dropped(&n.api).await {
            if last.get(&n.id) != Some(&v) {
                last.insert(n.id, v);
                rec.record("metrics", Kind::Info, Op::Dropped { node: n.id, total: v.0, expired: v.1 });
            }
        }
    }
}

/// Samples until stopped, then once more.
pub async fn run(api: Api, nodes: Vec<NodeEndpoints>, rec: Recorder, stop: Stop) {
    let mut last = HashMap::new();
    loop {
        sample(&api, &nodes, &rec, &mut last).await;
        if stop.sleep(Duration::from_secs(2)).await {
            break;
        }
    }
    sample(&api, &nodes, &rec, &mut last).await;
}
