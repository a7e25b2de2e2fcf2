//! What the edge knows at this moment: its services (their per-backend
//! state is in [`crate::service`]), the committed routing table, and the
//! DNS authority that answers from the same health.
//!
//! Health probes, outlier detection and the request path all update one
//! [`EdgeState`]. Locks are plain mutexes held for a few field updates and
//! never across an `.await`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tern_core::config::{Config, EdgeSettings};
use tern_core::health::{HealthState, HealthTracker};
use tern_core::outlier::{Ejection, OutlierDetector};
use tern_core::retry::RetryBudget;
use tern_core::routing::{self, BackendView, RoutePlan};

use crate::dns::authority::{Authority, DnsRecordStatus};
use crate::metrics::Metrics;
pub use crate::service::{BackendState, Clock, ServiceState, Serving};

/// The routing table the controllers committed, as this edge last got it.
#[derive(Debug, Clone, Default)]
pub struct CommittedRouting {
    /// 0: no table yet; the edge routes on its own checks alone.
    pub version: u64,
    /// "none", "controllers" or "disk".
    pub source: &'static str,
    /// When it was applied, on the edge's clock.
    pub applied_at: Option<Duration>,
    /// Per service, the weight of each region; a region at 0 takes traffic
    /// only when no other region can (the all-unhealthy policy decides).
    pub services: BTreeMap<String, BTreeMap<String, u32>>,
    /// The identity of the control plane that committed it (empty: unknown).
    pub cluster_id: String,
    /// A drill's evacuation: per region, the share of its traffic, percent,
    /// sent to the next choice.
    pub evacuation: BTreeMap<String, u8>,
    /// While a drill runs: the window this edge reports its clients' figures over.
    pub drill_window: Option<Duration>,
}

/// A committed routing table as an edge takes it (from the controllers or
/// from its saved copy).
#[derive(Debug, Clone, Default)]
pub struct RoutingUpdate {
    pub version: u64,
    /// Per service, the weight of each region.
    pub services: BTreeMap<String, BTreeMap<String, u32>>,
    pub evacuation: BTreeMap<String, u8>,
    pub drill_window: Option<Duration>,
    pub cluster_id: String,
}

pub struct EdgeState {
    pub region: String,
    pub routing: RwLock<CommittedRouting>,
    pub settings: EdgeSettings,
    pub services: Vec<ServiceState>,
    pub clock: Clock,
    pub metrics: Metrics,
    /// What clients saw, per second, for a drill's guardrails (all
    /// services; each service keeps its own too).
    pub clients: crate::guardrail::ClientWindow,
    /// This edge process among the region's edges, in its guardrail
    /// reports: the listen address, the process id and the start time.
    pub instance: String,
    /// Per region, the requests its backends answered, per second: the load
    /// each region serves through this edge (a drill's capacity check).
    pub served: BTreeMap<String, crate::guardrail::ClientWindow>,
    /// The zones, when the configuration has a `[dns]` table.
    pub dns: Option<Authority>,
    /// The HTTPS listener's certificates, when `[edge.tls]` is set.
    pub tls: Option<Arc<crate::tls::Certificates>>,
    /// The edge is shutting down (not ready, then draining): HTTP/1.1
    /// responses say `Connection: close`, so that clients open their next
    /// connection elsewhere (or to the edge that replaces this one) instead
    /// of reusing one that is about to close.
    pub closing: std::sync::atomic::AtomicBool,
}

impl EdgeState {
    pub fn new(config: &Config, settings: EdgeSettings) -> EdgeState {
        let clock = Clock::new();
        let now = clock.now();
        let metrics = Metrics::new();
        let services: Vec<ServiceState> = config
            .services
            .iter()
            .map(|s| {
                let backends: Vec<BackendState> = s
                    .backends
                    .iter()
                    .map(|b| BackendState {
                        config: b.clone(),
                        latency: metrics.backend_latency(&s.name, &b.region),
                        health: Mutex::new(HealthTracker::new(
                            b.health.fall,
                            b.health.rise,
                            HealthState::Up,
                            now,
                        )),
                        rtt: Mutex::new(None),
                    })
                    .collect();
                ServiceState {
                    outliers: Mutex::new(OutlierDetector::new(s.outlier, backends.len())),
                    retry_budget: Mutex::new(RetryBudget::new(
                        settings.retry_budget,
                        settings.retry_min_per_second,
                    )),
                    serving: Mutex::new(Serving {
                        regions: Vec::new(),
                        all_unhealthy: false,
                        since: now,
                    }),
                    requests: metrics.service_requests(&s.name),
                    clients: crate::guardrail::ClientWindow::new(),
                    config: s.clone(),
                    backends,
                }
            })
            .collect();
        let dns = config
            .dns
            .as_ref()
            .map(|d| Authority::new(d, &services, &metrics, now));
        let instance = format!(
            "{}/{}-{}",
            settings.listen,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() % 1_000_000_000_000)
        );
        let state = EdgeState {
            routing: RwLock::new(CommittedRouting {
                source: "none",
                ..CommittedRouting::default()
            }),
            region: settings.region.clone(),
            settings,
            services,
            clock,
            metrics,
            clients: crate::guardrail::ClientWindow::new(),
            instance,
            served: config
                .regions
                .iter()
                .map(|r| (r.name.clone(), crate::guardrail::ClientWindow::new()))
                .collect(),
            dns,
            tls: None,
            closing: std::sync::atomic::AtomicBool::new(false),
        };
        for s in &state.services {
            state.refresh_serving(s);
        }
        state
    }

    /// Finds the service for a host (lower case, no port) and path: exact
    /// host matches beat catch-all services, then the longest path prefix wins.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&ServiceState> {
        self.services
            .iter()
            .filter(|s| path.starts_with(&s.config.path_prefix))
            .filter_map(|s| {
                let exact = host.is_some_and(|h| s.config.hosts.iter().any(|x| host_matches(x, h)));
                if exact {
                    Some((1, s.config.path_prefix.len(), s))
                } else if s.config.hosts.is_empty() {
                    Some((0, s.config.path_prefix.len(), s))
                } else {
                    None
                }
            })
            .max_by_key(|(exact, len, _)| (*exact, *len))
            .map(|(_, _, s)| s)
    }

    /// Routes one request of `service`.
    pub fn plan(&self, service: &ServiceState, random: u64) -> RoutePlan {
        let now = self.clock.now();
        let views = service.views(now);
        let routing = self.routing.read().expect("routing lock");
        let committed = routing.services.get(&service.config.name);
        let views: Vec<BackendView<'_>> = views
            .iter()
            .map(|(b, healthy, ejected, rtt)| {
                let weight = committed
                    .and_then(|c| c.get(&b.config.region))
                    .copied()
                    .unwrap_or(b.config.weight);
                // A region the controllers took out (weight 0) is left to
                // the all-unhealthy policy, like a failing one.
                let allowed = committed.is_none_or(|_| weight > 0);
                BackendView {
                    region: &b.config.region,
                    weight,
                    healthy: *healthy && allowed,
                    ejected: *ejected,
                    rtt: *rtt,
                    evacuated: routing
                        .evacuation
                        .get(&b.config.region)
                        .copied()
                        .unwrap_or(0),
                }
            })
            .collect();
        drop(routing);
        routing::plan(
            service.config.policy,
            service.config.when_all_unhealthy,
            &self.region,
            &views,
            random,
        )
    }

    /// Applies a committed routing table if it is newer than the one held.
    /// Returns whether it was applied.
    pub fn apply_routing(&self, update: RoutingUpdate, source: &'static str) -> bool {
        let RoutingUpdate {
            version,
            services,
            evacuation,
            drill_window,
            cluster_id,
        } = update;
        let cluster_id = cluster_id.as_str();
        {
            let mut r = self.routing.write().expect("routing lock");
            // Another control plane (rebuilt from nothing, its versions
            // counting from 1 again) replaces the old one's table whatever
            // its version; within one plane, only newer versions count.
            let other_plane =
                !cluster_id.is_empty() && !r.cluster_id.is_empty() && cluster_id != r.cluster_id;
            if version <= r.version && !other_plane {
                return false;
            }
            if other_plane {
                tracing::warn!(
                    from = %r.cluster_id,
                    to = %cluster_id,
                    version,
                    old_version = r.version,
                    "the routing table comes from another control plane; it replaces the old one's"
                );
            }
            tracing::info!(version, source, ?evacuation, "routing table applied");
            if let Some(dns) = &self.dns {
                dns.set_evacuation(&evacuation);
            }
            *r = CommittedRouting {
                version,
                source,
                applied_at: Some(self.clock.now()),
                services,
                cluster_id: cluster_id.to_string(),
                evacuation,
                drill_window,
            };
        }
        for s in &self.services {
            self.refresh_serving(s);
        }
        true
    }

    /// Recomputes which regions the service sends first-choice traffic to,
    /// noting the time of any change.
    pub fn refresh_serving(&self, service: &ServiceState) {
        let now = self.clock.now();
        let (regions, all_unhealthy) = match self.plan(service, 0) {
            RoutePlan::FailClosed => (Vec::new(), true),
            RoutePlan::Try { order, degraded } => {
                let regions =
                    if service.config.policy == tern_core::config::Policy::Weighted && !degraded {
                        let mut r: Vec<String> = order
                            .iter()
                            .filter(|i| service.backends[**i].config.weight > 0)
                            .map(|i| service.backends[*i].config.region.clone())
                            .collect();
                        if r.is_empty() {
                            r = order
                                .iter()
                                .map(|i| service.backends[*i].config.region.clone())
                                .collect();
                        }
                        r.sort();
                        r.dedup();
                        r
                    } else {
                        order
                            .first()
                            .map(|i| vec![service.backends[*i].config.region.clone()])
                            .unwrap_or_default()
                    };
                (regions, degraded)
            }
        };
        let mut serving = service.serving.lock().expect("serving lock");
        if serving.regions != regions || serving.all_unhealthy != all_unhealthy {
            tracing::info!(
                service = %service.config.name,
                from = ?serving.regions,
                to = ?regions,
                all_unhealthy,
                "routing changed"
            );
            *serving = Serving {
                regions,
                all_unhealthy,
                since: now,
            };
        }
    }

    /// Records the outcome of one attempt for passive outlier detection.
    pub fn record_attempt(
        &self,
        service: &ServiceState,
        backend: usize,
        failed: bool,
    ) -> Option<Ejection> {
        let now = self.clock.now();
        let ejection = service
            .outliers
            .lock()
            .expect("outlier lock")
            .record(backend, !failed, now);
        if let Some(e) = ejection {
            let b = &service.backends[backend];
            tracing::warn!(
                service = %service.config.name,
                region = %b.config.region,
                backend = %b.config.url,
                ejection_ms = (e.until - now).as_millis() as u64,
                count = e.count,
                "backend ejected by outlier detection"
            );
            self.metrics
                .ejection(&service.config.name, &b.config.region);
            self.refresh_serving(service);
        }
        ejection
    }

    pub fn snapshot(&self, phase: &str) -> StatusSnapshot {
        let now = self.clock.now();
        let services = self
            .services
            .iter()
            .map(|s| {
                self.refresh_serving(s);
                let serving = s.serving.lock().expect("serving lock").clone();
                let outliers = s.outliers.lock().expect("outlier lock").clone();
                let backends = s
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let h = b.health.lock().expect("health lock").clone();
                        let rtt = *b.rtt.lock().expect("rtt lock");
                        BackendStatus {
                            region: b.config.region.clone(),
                            url: b.config.url.to_string(),
                            weight: b.config.weight,
                            health: h.state().as_str(),
                            health_since_unix_ms: self.clock.unix_ms(h.since()),
                            consecutive_probe_failures: h.consecutive_failed(),
                            probe_failures: h.probe_failures(),
                            ejected: outliers.is_ejected(i, now),
                            ejected_for_ms: outliers
                                .ejected_until(i, now)
                                .map(|u| (u - now).as_millis() as u64),
                            ejections: outliers.ejection_count(i),
                            rtt_ms: rtt.map(|r| r.as_secs_f64() * 1_000.0),
                        }
                    })
                    .collect();
                ServiceStatus {
                    name: s.config.name.clone(),
                    policy: s.config.policy.as_str(),
                    when_all_unhealthy: s.config.when_all_unhealthy.as_str(),
                    all_unhealthy: serving.all_unhealthy,
                    serving_regions: serving.regions,
                    serving_since_unix_ms: self.clock.unix_ms(serving.since),
                    backends,
                }
            })
            .collect();
        let routing = {
            let r = self.routing.read().expect("routing lock");
            RoutingStatus {
                version: r.version,
                source: r.source,
                applied_unix_ms: r.applied_at.map(|at| self.clock.unix_ms(at)),
                weights: r.services.clone(),
                cluster_id: r.cluster_id.clone(),
                evacuation: r.evacuation.clone(),
            }
        };
        StatusSnapshot {
            region: self.region.clone(),
            routing,
            phase: phase.to_string(),
            uptime_ms: now.as_millis() as u64,
            services,
            dns: self.dns.as_ref().map(|d| d.status(&self.services)),
            tls: self.tls.as_ref().map(|t| t.status()),
        }
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern == host,
    }
}

#[derive(Debug, Serialize)]
pub struct StatusSnapshot {
    pub region: String,
    pub routing: RoutingStatus,
    pub phase: String,
    pub uptime_ms: u64,
    pub services: Vec<ServiceStatus>,
    /// Policy records and what they answer now; absent without a `[dns]` table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<DnsRecordStatus>>,
    /// The HTTPS listener's certificates; absent without `[edge.tls]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsStatus>,
}

#[derive(Debug, Serialize)]
pub struct RoutingStatus {
    /// Version of the committed routing table in use; 0 when none.
    pub version: u64,
    pub source: &'static str,
    pub applied_unix_ms: Option<u64>,
    pub weights: BTreeMap<String, BTreeMap<String, u32>>,
    /// The control plane the table came from.
    pub cluster_id: String,
    /// A drill's evacuation shares, percent, by region.
    pub evacuation: BTreeMap<String, u8>,
}

#[derive(Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub policy: &'static str,
    pub when_all_unhealthy: &'static str,
    pub all_unhealthy: bool,
    /// Regions receiving first-choice traffic right now.
    pub serving_regions: Vec<String>,
    pub serving_since_unix_ms: u64,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub region: String,
    pub url: String,
    pub weight: u32,
    pub health: &'static str,
    pub health_since_unix_ms: u64,
    pub consecutive_probe_failures: u32,
    /// Failed health probes since the edge started (HAProxy's `chkfail`).
    pub probe_failures: u64,
    pub ejected: bool,
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
    pub rtt_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn wildcard_hosts() {
        assert!(host_matches("api.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "aexample.com"));
    }
}
