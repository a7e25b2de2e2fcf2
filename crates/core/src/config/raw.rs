//! Stage one of loading: the file's shape, as written, with source spans.
//!
//! Every struct denies unknown fields, and values that stage two validates keep
//! their span so that an error can point at the exact line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub use super::control::{RawAgent, RawController, RawDatabase, RawVerdict};

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub region: Vec<S<RawRegion>>,
    pub edge: Option<S<RawEdge>>,
    #[serde(default)]
    pub service: BTreeMap<S<String>, S<RawService>>,
    pub dns: Option<S<super::dns::RawDns>>,
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
    pub shutdown_grace: Option<S<String>>,
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
    #[serde(default)]
    pub backend: Vec<S<RawBackend>>,
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
}
