//! Prometheus metrics of an agent, named `tern_agent_<thing>_<unit>[_total]`,
//! served at `/metrics` on `agent.admin` (OpenMetrics text format 1.0):
//! what its probes see of every region and service, and per database
//! cluster its node's role, fence and replication lag, its lease, and its
//! writer proxy's connections and refusals. Every series carries the
//! agent's region (`agent_region`). Label values are region, service and
//! cluster names, which the configuration restricts to letters, digits,
//! `-` and `_`: none needs escaping.
//!
//! The probe loop and the database loops record into one [`AgentMetrics`]
//! as they go, each with the time of its last round
//! (`tern_agent_last_round_timestamp_seconds`), so that a loop that hangs
//! shows as a timestamp that stops moving rather than as figures that look
//! current; the writer proxies' counters are read at the scrape.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::writer_proxy::{ProxyStats, WriterProxy};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
/// A writer-proxy family: name (a counter's without `_total`, which the
/// encoder adds), type, help, and its value in the stats.
type ProxyFamily = (
    &'static str,
    MetricType,
    &'static str,
    fn(&ProxyStats) -> u64,
);

/// The writer proxies' families, read from their own counters at the scrape.
const PROXY_FAMILIES: [ProxyFamily; 5] = [
    (
        "tern_agent_writer_proxy_connections",
        MetricType::Gauge,
        "Client connections the writer proxy relays now",
        |s| s.active,
    ),
    (
        "tern_agent_writer_proxy_accepted",
        MetricType::Counter,
        "Client connections led to a primary",
        |s| s.accepted,
    ),
    (
        "tern_agent_writer_proxy_refused",
        MetricType::Counter,
        "Client connections refused because no primary may take writes",
        |s| s.refused,
    ),
    (
        "tern_agent_writer_proxy_unreachable",
        MetricType::Counter,
        "Client connections whose primary could not be reached",
        |s| s.unreachable,
    ),
    (
        "tern_agent_writer_proxy_cut",
        MetricType::Counter,
        "Client connections ended because the writer changed or its lease ran out",
        |s| s.cut,
    ),
];

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Seconds since the Unix epoch now, for a timestamp gauge.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The writer proxies, by cluster, whose counters the scrape reads.
type Proxies = Arc<Mutex<Vec<(String, WriterProxy)>>>;

/// Encodes the writer proxies' counters at the scrape, through the
/// registry, so they carry its `agent_region` label and its encoding.
struct ProxyCollector(Proxies);

impl std::fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyCollector")
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: Vec<(Labels, ProxyStats)> = self
            .0
            .lock()
            .expect("metrics proxies")
            .iter()
            .map(|(cluster, proxy)| (labels(&[("cluster", cluster)]), proxy.stats()))
            .collect();
        if stats.is_empty() {
            return Ok(());
        }
        for (name, kind, help, value) in PROXY_FAMILIES {
            // Written as the registry writes its own families' help.
            let help = format!("{help}.");
            let mut family = encoder.encode_descriptor(name, &help, None, kind)?;
            for (l, s) in &stats {
                let series = family.encode_family(l)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(value(s)).encode(series)?,
                    _ => ConstGauge::new(value(s) as i64).encode(series)?,
                }
            }
        }
        Ok(())
    }
}

/// The agent's metrics; cheap to clone (shared).
#[derive(Clone)]
pub struct AgentMetrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    probe_up: Family<Labels, Gauge>,
    probe_latency: Family<Labels, FloatGauge>,
    probe_failures: Family<Labels, Counter>,
    reports_failed: Counter,
    node_role: Family<Labels, Gauge>,
    node_fenced: Family<Labels, Gauge>,
    lag_bytes: Family<Labels, Gauge>,
    lag_seconds: Family<Labels, FloatGauge>,
    lease_epoch: Family<Labels, Gauge>,
    lease_remaining: Family<Labels, FloatGauge>,
    last_round: Family<Labels, FloatGauge>,
    proxies: Proxies,
}

/// What a database loop saw of its node and lease in one round.
pub struct DbRound<'a> {
    pub cluster: &'a str,
    /// primary, standby, or `None` when the node did not answer.
    pub role: Option<&'a str>,
    /// The node takes no writes although it is no standby: stopped (by a
    /// fence, or down) or a read-only primary.
    pub fenced: bool,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// The lease held here: epoch and seconds left before its local deadline.
    pub lease: Option<(u64, f64)>,
}

impl AgentMetrics {
    /// Metrics for the agent of `region`.
    pub fn new(region: &str) -> AgentMetrics {
        let mut registry = Registry::with_labels(
            [(
                std::borrow::Cow::Borrowed("agent_region"),
                std::borrow::Cow::Owned(region.to_string()),
            )]
            .into_iter(),
        );
        let probe_up = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_agent_probe_up",
            "1 when the last probe round found the service in the region healthy",
            probe_up.clone(),
        );
        let probe_latency = Family::<Labels, FloatGauge>::default();
        registry.register(
            "tern_agent_probe_latency_seconds",
            "Latency of the last successful probe of the service in the region",
            probe_latency.clone(),
        );
        let probe_failures = Family::<Labels, Counter>::default();
        registry.register(
            "tern_agent_probe_failures",
            "Probe rounds that found the service in the region failing",
            probe_failures.clone(),
        );
        let reports_failed = Counter::default();
        registry.register(
            "tern_agent_reports_failed",
            "Probe rounds no controller accepted",
            reports_failed.clone(),
        );
        let node_role = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_agent_node_role",
            "1 for the role the local database node answered with (primary, standby, down)",
            node_role.clone(),
        );
        let node_fenced = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_agent_node_fenced",
            "1 when the local database node takes no writes although it is no standby (stopped, or a read-only primary)",
            node_fenced.clone(),
        );
        let lag_bytes = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_agent_replication_lag_bytes",
            "Replication lag of the local node (primary: its slowest standby; standby: received, not replayed)",
            lag_bytes.clone(),
        );
        let lag_seconds = Family::<Labels, FloatGauge>::default();
        registry.register(
            "tern_agent_replication_lag_seconds",
            "Replication lag of the local node in time",
            lag_seconds.clone(),
        );
        let lease_epoch = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_agent_lease_epoch",
            "Epoch of the writer lease held here (0: none)",
            lease_epoch.clone(),
        );
        let lease_remaining = Family::<Labels, FloatGauge>::default();
        registry.register(
            "tern_agent_lease_remaining_seconds",
            "Time left before the lease held here runs out, counted from the renewal's send (0: none)",
            lease_remaining.clone(),
        );
        let last_round = Family::<Labels, FloatGauge>::default();
        registry.register(
            "tern_agent_last_round_timestamp_seconds",
            "Unix time at which the loop (probe; database, per cluster) last finished a round: stops moving when the loop hangs",
            last_round.clone(),
        );
        let proxies = Proxies::default();
        registry.register_collector(Box::new(ProxyCollector(proxies.clone())));
        AgentMetrics(Arc::new(Inner {
            registry,
            probe_up,
            probe_latency,
            probe_failures,
            reports_failed,
            node_role,
            node_fenced,
            lag_bytes,
            lag_seconds,
            lease_epoch,
            lease_remaining,
            last_round,
            proxies,
        }))
    }

    /// One probe result of `service` (or every service, `None`) in `region`,
    /// recorded as the probe loop finishes a round.
    pub fn probe(&self, region: &str, service: Option<&str>, ok: bool, latency_ms: Option<u64>) {
        self.0
            .last_round
            .get_or_create(&labels(&[("loop", "probe")]))
            .set(unix_now());
        let l = labels(&[("region", region), ("service", service.unwrap_or("*"))]);
        self.0.probe_up.get_or_create(&l).set(i64::from(ok));
        if ok {
            if let Some(ms) = latency_ms {
                self.0
                    .probe_latency
                    .get_or_create(&l)
                    .set(ms as f64 / 1000.0);
            }
        } else {
            self.0.probe_failures.get_or_create(&l).inc();
        }
    }

    /// A probe round that no controller accepted.
    pub fn report_failed(&self) {
        self.0.reports_failed.inc();
    }

    /// What a database loop saw in one round.
    pub fn db_round(&self, r: &DbRound<'_>) {
        let cluster = labels(&[("cluster", r.cluster)]);
        let role = r.role.unwrap_or("down");
        for candidate in ["primary", "standby", "down"] {
            self.0
                .node_role
                .get_or_create(&labels(&[("cluster", r.cluster), ("role", candidate)]))
                .set(i64::from(role == candidate));
        }
        self.0
            .node_fenced
            .get_or_create(&cluster)
            .set(i64::from(r.fenced));
        if let Some(b) = r.lag_bytes {
            self.0.lag_bytes.get_or_create(&cluster).set(b as i64);
        }
        if let Some(s) = r.lag_seconds {
            self.0.lag_seconds.get_or_create(&cluster).set(s);
        }
        let (epoch, left) = r.lease.unwrap_or((0, 0.0));
        self.0.lease_epoch.get_or_create(&cluster).set(epoch as i64);
        self.0.lease_remaining.get_or_create(&cluster).set(left);
        self.0
            .last_round
            .get_or_create(&labels(&[("loop", "database"), ("cluster", r.cluster)]))
            .set(unix_now());
    }

    /// The writer proxies whose counters the scrape reads.
    pub fn add_proxy(&self, cluster: &str, proxy: WriterProxy) {
        self.0
            .proxies
            .lock()
            .expect("metrics proxies")
            .push((cluster.to_string(), proxy));
    }

    /// Every metric now, in the text exposition format; the writer
    /// proxies' counters are read now (they count by themselves).
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.0.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` (and `GET /ready`, 200 while the agent runs) on
/// `listener` until `stop`.
///
/// # Errors
/// The listener cannot be used by tokio.
pub async fn serve(
    listener: std::net::TcpListener,
    metrics: AgentMetrics,
    stop: CancellationToken,
) -> Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener).context("the agent's admin listener")?;
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, for example: back off, do not spin.
                    tracing::warn!("agent admin accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, kind, body) = match (req.method(), req.uri().path()) {
                        (&http::Method::GET, "/metrics") => (
                            http::StatusCode::OK,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            metrics.render(),
                        ),
                        (&http::Method::GET, "/ready") => {
                            (http::StatusCode::OK, "text/plain", "ready\n".to_string())
                        }
                        _ => (
                            http::StatusCode::NOT_FOUND,
                            "text/plain",
                            "not found: the agent serves /metrics and /ready\n".to_string(),
                        ),
                    };
                    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(kind),
                    );
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The address an admin listener for `addr` binds, for the ready line.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .with_context(|| format!("bind the agent's admin address {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer_proxy::Target;

    #[tokio::test]
    async fn every_series_names_the_agent_region_and_each_loop_stamps_its_rounds() {
        let metrics = AgentMetrics::new("us-east");
        let (proxy, _task) = WriterProxy::bind(
            "127.0.0.1:0".parse().unwrap(),
            "payments",
            Target::Closed {
                reason: "test".into(),
            },
        )
        .await
        .unwrap();
        metrics.add_proxy("payments", proxy);
        metrics.probe("us-west", Some("api"), true, Some(12));
        metrics.db_round(&DbRound {
            cluster: "payments",
            role: Some("primary"),
            fenced: false,
            lag_bytes: Some(0),
            lag_seconds: Some(0.0),
            lease: Some((3, 1.5)),
        });
        let page = metrics.render();
        let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(!samples.is_empty(), "{page}");
        for line in &samples {
            assert!(line.contains("agent_region=\"us-east\""), "{line}");
        }
        assert!(
            page.contains("# TYPE tern_agent_writer_proxy_accepted counter\n"),
            "{page}"
        );
        assert!(
            samples
                .iter()
                .any(|l| l.starts_with("tern_agent_writer_proxy_accepted_total{")
                    && l.contains("cluster=\"payments\"")),
            "{page}"
        );
        assert!(
            samples
                .iter()
                .any(|l| l.starts_with("tern_agent_writer_proxy_connections{")),
            "{page}"
        );
        let now = unix_now();
        for set in ["loop=\"probe\"", "loop=\"database\""] {
            let stamp: f64 = samples
                .iter()
                .find(|l| {
                    l.starts_with("tern_agent_last_round_timestamp_seconds{") && l.contains(set)
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no round timestamp for {set}:\n{page}"));
            assert!((now - stamp).abs() < 5.0, "{set}: {stamp} vs {now}");
        }
        assert_eq!(page.matches("# EOF").count(), 1, "{page}");
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}
