//! The few management API calls the tool needs: health, cluster status, metrics, retained messages.

use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Deserialize;

/// One group in `GET /api/v1/cluster`.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupView {
    /// Group id (0 = meta).
    pub group: u64,
    /// Leader as this node sees it.
    pub leader: Option<u64>,
    /// This node's role in the group (`leader`, `follower`, ...).
    #[serde(default)]
    pub role: String,
    /// Last log index on this node.
    #[serde(default)]
    pub last_log_index: Option<u64>,
    /// Last applied index on this node.
    #[serde(default)]
    pub last_applied: Option<u64>,
    /// Index up to which this node purged its log.
    #[serde(default)]
    pub purged: Option<u64>,
}

/// `GET /api/v1/cluster`, the fields used here.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterView {
    /// Whether the node considers itself healthy.
    #[serde(default)]
    pub healthy: bool,
    /// Every group this node runs.
    pub groups: Vec<GroupView>,
}

/// A client for one cluster's API (every node shares the admin token).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    token: String,
}

/// How a retained write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// 2xx: applied.
    Ok,
    /// Certainly not applied: connection refused, or a 4xx.
    Fail(String),
    /// May have been applied: timeout, broken connection, 5xx.
    Unknown(String),
}

impl Api {
    /// A client whose requests time out after `timeout`.
    pub fn new(token: &str, timeout: Duration) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_millis(500))
            .pool_max_idle_per_host(2)
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, token: token.to_string() })
    }

    /// `GET /healthz` is 200.
    pub async fn healthy(&self, base: &str) -> bool {
        matches!(self.http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status().is_success())
    }

    /// `GET /api/v1/cluster`.
    pub async fn cluster(&self, base: &str) -> anyhow::Result<ClusterView> {
        let r = self
            .http
            .get(format!("{base}/api/v1/cluster"))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {base}/api/v1/cluster"))?;
        if !r.status().is_success() {
            return Err(anyhow!("GET {base}/api/v1/cluster: HTTP {}", r.status()));
        }
        r.json().await.with_context(|| format!("GET {base}/api/v1/cluster: unexpected body"))
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self, base: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .with_context(|| format!("GET {base}/metrics"))?
            .text()
            .await?)
    }

    /// `ironhub_queue_dropped_total` summed over its labels, and its `reason="expired"` part, in
    /// `GET /metrics` (absent = 0).
    pub async fn queue_dropped(&self, base: &str) -> anyhow::Result<(u64, u64)> {
        let text = self.metrics(base).await?;
        let name = "ironhub_queue_dropped_total";
        Ok((parse_counter(&text, name), parse_counter_with(&text, name, "reason=\"expired\"")))
    }

    /// Snapshots the node installed (sent by a leader), over every group.
    pub async fn snapshots_installed(&self, base: &str) -> anyhow::Result<u64> {
        let text = self.metrics(base).await?;
        Ok(parse_counter_with(&text, "ironhub_raft_snapshots_total", "kind=\"installed\""))
    }

    /// The node's wall clock, from the `Date` header of `GET /healthz` (seconds since the epoch).
    pub async fn wall_clock(&self, base: &str) -> anyhow::Result<i64> {
        let r = self
            .http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .with_context(|| format!("GET {base}/healthz"))?;
        let d = r
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("GET {base}/healthz: no Date header"))?;
        parse_http_date(d).ok_or_else(|| anyhow!("GET {base}/healthz: bad Date header {d:?}"))
    }

    /// `PUT /api/v1/retained/{topic}` with a QoS 1 text payload.
    pub async fn put_retained(&self, base: &str, topic: &str, payload: &str) -> WriteOutcome {
        let body = serde_json::json!({"payload": payload, "qos": 1});
        let r = self
            .http
            .put(format!("{base}/api/v1/retained/{topic}"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        match r {
            Ok(r) if r.status().is_success() => WriteOutcome::Ok,
            Ok(r) if r.status().is_client_error() => {
                let s = r.status();
                WriteOutcome::Fail(format!("HTTP {s}: {}", r.text().await.unwrap_or_default()))
            }
            Ok(r) => WriteOutcome::Unknown(format!("HTTP {}", r.status())),
            Err(e) if e.is_connect() => WriteOutcome::Fail(format!("connect: {e}")),
            Err(e) => WriteOutcome::Unknown(e.to_string()),
        }
    }

    /// `GET /api/v1/retained/{topic}`: `Ok(None)` on 404.
    pub async fn get_retained(&self, base: &str, topic: &str) -> anyhow::Result<Option<String>> {
        let r = self
            .http
            .get(format!("{base}/api/v1/retained/{topic}"))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {base}/api/v1/retained/{topic}"))?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(anyhow!("GET {base}/api/v1/retained/{topic}: HTTP {}", r.status()));
        }
        #[derive(Deserialize)]
        struct Body {
            payload: String,
        }
        let b: Body = r.json().await.context("retained message: unexpected body")?;
        Ok(Some(b.payload))
    }
}

/// Sums every sample of a Prometheus counter in the text exposition format.
pub fn parse_counter(text: &str, name: &str) -> u64 {
    parse_counter_with(text, name, "")
}

/// Sums the samples of a counter whose line contains `label` (e.g. `kind="installed"`).
pub fn parse_counter_with(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Parses an HTTP date (`Wed, 25 Nov 2026 14:30:16 GMT`) into seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let w: Vec<&str> = s.split_whitespace().collect();
    let [_, day, mon, year, hms, "GMT"] = w.as_slice() else { return None };
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = MONTHS.iter().position(|x| x == mon)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [h, mi, se] = t.as_slice() else { return None };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_sums_labels_and_absent_is_zero() {
        let text = "# HELP ironhub_queue_dropped_total drops\n\
                    ironhub_queue_dropped_total{reason=\"full\"} 3\n\
                    ironhub_queue_dropped_total{reason=\"expired\"} 2\n\
                    ironhub_queue_dropped_totally 100\n";
        assert_eq!(parse_counter(text, "ironhub_queue_dropped_total"), 5);
        assert_eq!(parse_counter("ironhub_raft_commands_total 9\n", "ironhub_queue_dropped_total"), 0);
        assert_eq!(parse_counter_with(text, "ironhub_queue_dropped_total", "reason=\"expired\""), 2);
    }

    #[test]
    fn http_dates_parse_to_epoch_seconds() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Wed, 25 Nov 2026 14:30:16 GMT"), Some(1_795_617_016));
        assert_eq!(parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"), Some(1_835_481_599));
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
