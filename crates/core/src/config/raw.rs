//! Stage one of loading: the file's shape, as written, with source spans.
//!
//! This module is the whole shape of the file, every table of it; the
//! modules that validate a table (`control`, `dns`, the rest in `config`)
//! read these structs and depend on nothing else here.
//!
//! Every struct denies unknown fields, and values that stage two validates keep
//! their span so that an error can point at the exact line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub region: Vec<S<RawRegion>>,
    pub edge: Option<S<RawEdge>>,
    #[serde(default)]
    pub service: BTreeMap<S<String>, S<RawService>>,
    pub dns: Option<S<RawDns>>,
    pub controller: Option<S<RawController>>,
    pub verdict: Option<S<RawVerdict>>,
    pub agent: Option<S<RawAgent>>,
    #[serde(default)]
    pub database: BTreeMap<S<String>, S<RawDatabase>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub name: S<String>,
    #[serde(default = "yes")]
    pub serves_traffic: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEdge {
    pub region: S<String>,
    pub listen: S<String>,
    pub admin: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub try_timeout: Option<S<String>>,
    pub retry_budget: Option<S<f64>>,
    pub retry_min_per_second: Option<S<i64>>,
    pub retry_body_limit: Option<S<String>>,
    pub max_body: Option<S<String>>,
    pub max_header: Option<S<String>>,
    pub max_request_headers: Option<S<i64>>,
    pub max_response_headers: Option<S<i64>>,
    pub shutdown_grace: Option<S<String>>,
    pub unready_delay: Option<S<String>>,
    pub tls: Option<S<RawEdgeTls>>,
    pub workers: Option<S<i64>>,
    pub client_timeout: Option<S<String>>,
    pub routing_state: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub policy: S<String>,
    #[serde(default)]
    pub hosts: Vec<S<String>>,
    pub path_prefix: Option<S<String>>,
    pub when_all_unhealthy: Option<S<String>>,
    pub outlier: Option<S<RawOutlier>>,
    pub critical: Option<S<bool>>,
    pub tls: Option<S<RawCertPair>>,
    pub https_redirect: Option<S<bool>>,
    #[serde(default)]
    pub backend: Vec<S<RawBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEdgeTls {
    pub listen: S<String>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    #[serde(default)]
    pub certificate: Vec<S<RawNamedCert>>,
    pub reload_check: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamedCert {
    pub hosts: Vec<S<String>>,
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: S<String>,
    pub key: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    pub ca: Option<S<String>>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    pub server_name: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<S<i64>>,
    pub base_ejection: Option<S<String>>,
    pub max_ejection: Option<S<String>>,
    pub max_ejected_share: Option<S<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub region: S<String>,
    pub url: S<String>,
    pub weight: Option<S<i64>>,
    pub health: Option<S<RawHealth>>,
    pub tls: Option<S<RawBackendTls>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub kind: Option<S<String>>,
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub fall: Option<S<i64>>,
    pub rise: Option<S<i64>>,
    pub expect_status: Option<S<String>>,
    pub body_contains: Option<S<String>>,
    pub host: Option<S<String>>,
    pub headers: Option<S<BTreeMap<String, S<String>>>>,
}

// ---- [controller], [verdict], [agent], [database.NAME] ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawController {
    pub allow_unsafe_placement: Option<S<bool>>,
    pub insecure_plaintext: Option<S<bool>>,
    pub heartbeat: Option<S<String>>,
    pub election_timeout: Option<S<String>>,
    pub rpc_timeout: Option<S<String>>,
    #[serde(default)]
    pub node: Vec<S<RawNode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: S<i64>,
    pub region: S<String>,
    pub addr: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerdict {
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub fall: Option<S<i64>>,
    pub rise: Option<S<i64>>,
    pub hold_down: Option<S<String>>,
    pub degraded_latency: Option<S<String>>,
    pub region_down: Option<S<RawRegionDown>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub region: S<String>,
    pub admin: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub replication: Option<S<String>>,
    pub rpo_budget: Option<S<RawBudget>>,
    pub lease: Option<S<String>>,
    pub drift_margin: Option<S<String>>,
    /// The region whose node is the primary when the cluster is first seen.
    pub primary: Option<S<String>>,
    pub scale_hook: Option<S<String>>,
    pub scale_hook_timeout: Option<S<String>>,
    pub step_timeout: Option<S<String>>,
    #[serde(default)]
    pub app_roles: Vec<S<String>>,
    #[serde(default)]
    pub app_sources: Vec<S<String>>,
    #[serde(default)]
    pub node: Vec<S<RawDbNode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDbNode {
    pub region: S<String>,
    pub addr: S<String>,
    pub proxy: Option<S<String>>,
    pub data_dir: Option<S<String>>,
    pub bin_dir: Option<S<String>>,
    #[serde(default)]
    pub server_args: Vec<S<String>>,
    pub stop_with_agent: Option<S<bool>>,
}

/// `region_down`: `"all"`, `"any"` or a number of critical services.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawRegionDown {
    Word(String),
    Count(i64),
}

/// `rpo_budget`: one size or duration, or several (`["1s", "1MiB"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawBudget {
    One(String),
    Many(Vec<String>),
}

// ---- [dns] ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub listen: S<String>,
    pub workers: Option<S<i64>>,
    #[serde(default)]
    pub network: Vec<S<RawNetwork>>,
    #[serde(default)]
    pub zone: Vec<S<RawZone>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub prefix: S<String>,
    pub region: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    pub name: S<String>,
    #[serde(default)]
    pub ns: Vec<S<String>>,
    pub hostmaster: Option<S<String>>,
    pub serial: Option<S<i64>>,
    pub refresh: Option<S<String>>,
    pub retry: Option<S<String>>,
    pub expire: Option<S<String>>,
    pub negative_ttl: Option<S<String>>,
    pub ttl: Option<S<String>>,
    #[serde(default)]
    pub record: Vec<S<RawRecord>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecord {
    pub name: S<String>,
    #[serde(rename = "type")]
    pub kind: S<String>,
    pub ttl: Option<S<String>>,
    #[serde(default)]
    pub values: Vec<S<String>>,
    pub policy: Option<S<String>>,
    pub when_all_unhealthy: Option<S<String>>,
    #[serde(default)]
    pub target: Vec<S<RawTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub address: S<String>,
    pub region: S<String>,
    pub weight: Option<S<i64>>,
    pub service: Option<S<String>>,
    pub health: Option<S<RawTargetHealth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargetHealth {
    pub port: S<i64>,
    pub kind: Option<S<String>>,
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub fall: Option<S<i64>>,
    pub rise: Option<S<i64>>,
    pub expect_status: Option<S<String>>,
    pub body_contains: Option<S<String>>,
    pub host: Option<S<String>>,
    pub headers: Option<S<BTreeMap<String, S<String>>>>,
}
