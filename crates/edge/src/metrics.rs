//! Prometheus metrics of the edge, named `tern_edge_<thing>_<unit>[_total]`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Requests of one service by status class (1xx to 5xx).
#[derive(Clone)]
pub struct RequestCounters {
    by_class: [Counter; 5],
}

impl RequestCounters {
    pub fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
    }
}

/// Answers of one DNS policy record by outcome, resolved once at start.
#[derive(Clone)]
pub struct DnsRecordCounters {
    pub healthy: Counter,
    pub degraded: Counter,
    pub fail_closed: Counter,
}

/// DNS responses by code, plus truncated responses and dropped packets.
#[derive(Clone)]
pub struct DnsResponseCounters {
    by_rcode: [Counter; 7],
    pub truncated: Counter,
    pub dropped: Counter,
}

const DNS_RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

impl DnsResponseCounters {
    pub fn count(&self, rcode: hickory_proto::op::ResponseCode) {
        self.count_n(rcode, 1);
    }

    pub fn count_n(&self, rcode: hickory_proto::op::ResponseCode, n: u64) {
        let i = match u16::from(rcode) {
            c @ 0..=5 => usize::from(c),
            _ => 6,
        };
        self.by_rcode[i].inc_by(n);
    }
}

pub struct Metrics {
    registry: Registry,
    dns_answers: Family<Labels, Counter>,
    dns_responses: Family<Labels, Counter>,
    dns_target_up: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    retries_denied: Family<Labels, Counter>,
    ejections: Family<Labels, Counter>,
    upstream_latency: Family<Labels, Histogram, fn() -> Histogram>,
    backend_up: Family<Labels, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let retries = Family::<Labels, Counter>::default();
        let retries_denied = Family::<Labels, Counter>::default();
        let ejections = Family::<Labels, Counter>::default();
        let upstream_latency =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let backend_up = Family::<Labels, Gauge>::default();
        let dns_answers = Family::<Labels, Counter>::default();
        let dns_responses = Family::<Labels, Counter>::default();
        let dns_target_up = Family::<Labels, Gauge>::default();
        registry.register(
            "tern_dns_target_up",
            "1 when a DNS target's own health check considers it up",
            dns_target_up.clone(),
        );
        registry.register(
            "tern_dns_answers",
            "Answers of DNS policy records, by record, type, policy and outcome (healthy, degraded: all targets unhealthy and failing open, fail-closed: SERVFAIL)",
            dns_answers.clone(),
        );
        registry.register(
            "tern_dns_responses",
            "DNS responses by response code; rcode=\"truncated\" counts UDP responses cut to fit, rcode=\"dropped\" packets not answered",
            dns_responses.clone(),
        );
        registry.register(
            "tern_edge_requests",
            "Requests answered by the edge, by service and status class",
            requests.clone(),
        );
        registry.register(
            "tern_edge_retries",
            "Attempts retried on another backend, by service and target region",
            retries.clone(),
        );
        registry.register(
            "tern_edge_retries_denied",
            "Retries refused because the request was not safe to repeat or the retry budget was spent",
            retries_denied.clone(),
        );
        registry.register(
            "tern_edge_ejections",
            "Backends ejected by passive outlier detection",
            ejections.clone(),
        );
        registry.register(
            "tern_edge_upstream_latency_seconds",
            "Time from sending a request to a backend until its response head, by region",
            upstream_latency.clone(),
        );
        registry.register(
            "tern_edge_backend_up",
            "1 when active health checks consider the backend up",
            backend_up.clone(),
        );
        Metrics {
            registry,
            dns_answers,
            dns_responses,
            dns_target_up,
            requests,
            retries,
            retries_denied,
            ejections,
            upstream_latency,
            backend_up,
        }
    }

    /// Request counters of one service, resolved once so that the request
    /// path only increments an atomic.
    pub fn service_requests(&self, service: &str) -> RequestCounters {
        let by_class = std::array::from_fn(|i| {
            self.requests
                .get_or_create(&vec![
                    ("service", service.to_string()),
                    ("class", format!("{}xx", i + 1)),
                ])
                .clone()
        });
        RequestCounters { by_class }
    }

    /// Counts a request answered without a service (no route).
    pub fn unrouted_request(&self, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("service", "-".to_string()),
                ("class", format!("{}xx", status / 100)),
            ])
            .inc();
    }

    /// The upstream latency histogram of one backend, resolved once.
    pub fn backend_latency(&self, service: &str, region: &str) -> Histogram {
        self.upstream_latency
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("region", region.to_string()),
            ])
            .clone()
    }

    pub fn retry(&self, service: &str, region: &str) {
        self.retries
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("region", region.to_string()),
            ])
            .inc();
    }

    pub fn retry_denied(&self, service: &str, reason: &'static str) {
        self.retries_denied
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    pub fn ejection(&self, service: &str, region: &str) {
        self.ejections
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("region", region.to_string()),
            ])
            .inc();
    }

    pub fn upstream_latency(&self, service: &str, region: &str, seconds: f64) {
        self.upstream_latency
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("region", region.to_string()),
            ])
            .observe(seconds);
    }

    pub fn backend_up(&self, service: &str, region: &str, url: &str, up: bool) {
        self.backend_up
            .get_or_create(&vec![
                ("service", service.to_string()),
                ("region", region.to_string()),
                ("url", url.to_string()),
            ])
            .set(i64::from(up));
    }

    /// Counters of one DNS policy record, resolved once.
    pub fn dns_record(&self, record: &str, kind: &str, policy: &str) -> DnsRecordCounters {
        let get = |outcome: &str| {
            self.dns_answers
                .get_or_create(&vec![
                    ("record", record.to_string()),
                    ("type", kind.to_string()),
                    ("policy", policy.to_string()),
                    ("outcome", outcome.to_string()),
                ])
                .clone()
        };
        DnsRecordCounters {
            healthy: get("healthy"),
            degraded: get("degraded"),
            fail_closed: get("fail-closed"),
        }
    }

    pub fn dns_responses(&self) -> DnsResponseCounters {
        let get = |rcode: &str| {
            self.dns_responses
                .get_or_create(&vec![("rcode", rcode.to_string())])
                .clone()
        };
        DnsResponseCounters {
            by_rcode: std::array::from_fn(|i| get(DNS_RCODES[i])),
            truncated: get("truncated"),
            dropped: get("dropped"),
        }
    }

    pub fn dns_target_up(&self, record: &str, region: &str, address: &str, up: bool) {
        self.dns_target_up
            .get_or_create(&vec![
                ("record", record.to_string()),
                ("region", region.to_string()),
                ("address", address.to_string()),
            ])
            .set(i64::from(up));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
