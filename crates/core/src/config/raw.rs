//! Stage one of loading: the file's shape, as written, with source spans.
//!
//! This module is the whole shape of the file, every table of it; the
//! modules that validate a table (`control`, `dns`, the rest in `config`)
//! read these structs and depend on nothing else here.
//!
//! Every struct denies unknown fields, and values that stage two validates keep
//! their span so that an error can point at the exact line.
//!
//! [`read`] reports every problem of shape in one pass. serde stops at the
//! first value it cannot take, so the file is parsed once into a spanned
//! document tree ([`DeTable`]) and the structs are deserialized from it
//! again and again: each time a value is refused, the problem is recorded,
//! the value is set aside in the tree (replaced by a neutral value of the
//! type expected, or dropped when none fits) and the next attempt reads on.
//! This rests on two things serde and toml guarantee (the error's span and
//! serde's `expected ...` wording) rather than on a second description of
//! the file's shape that could drift from these structs, and it finds type
//! errors, unknown keys and missing keys alike, wherever they are, even
//! several in one table. A syntax error still stops reading: past it, the
//! file's structure is a guess.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{self, ConfigError, Source, A_DURATION, A_SIZE};

pub type S<T> = Spanned<T>;

/// What stage one read: the file's shape, the problems found on the way
/// and the places set aside to read past them.
pub struct Read {
    /// The shape, without the values set aside.
    pub config: RawConfig,
    /// Every problem of shape (type, unknown key, missing key), in the order found.
    pub problems: Vec<ConfigError>,
    /// Values replaced or dropped to read on; what stage two finds in them
    /// or because of them follows from a problem already reported.
    pub set_aside: Vec<SetAside>,
}

/// A value stage one could not use, by place and dotted key.
pub struct SetAside {
    /// 1-based line and column where the value starts, and where it ends.
    start: (usize, usize),
    end: (usize, usize),
    /// Such as `service.api.backend[0].weight`.
    key: String,
}

impl SetAside {
    /// Whether `e`, found by stage two, follows from this value having been
    /// set aside: it points inside the value (the neutral value stood in for
    /// it), or it names a table that holds the value (a table without its
    /// backends, a list without its regions). A problem of the same table
    /// that does not come from it is shown once this one is fixed.
    pub fn explains(&self, e: &ConfigError) -> bool {
        let at = (e.line, e.column);
        (e.line > 0 && self.start <= at && at < self.end)
            || key_holds(&e.key, &self.key)
            || self.leaves_unknown(e)
    }

    /// Whether `e` says a name is unknown that this value could have
    /// defined: with a region's name refused (or a service dropped), which
    /// names exist is not known, and every reference would be "unknown".
    fn leaves_unknown(&self, e: &ConfigError) -> bool {
        let key: Vec<&str> = self.key.split('.').collect();
        let region = match key.as_slice() {
            [r] | [r, "name"] => r.split('[').next() == Some("region"),
            _ => false,
        };
        let service = matches!(key.as_slice(), ["service"] | ["service", _]);
        (region && e.message.starts_with("unknown region \""))
            || (service && e.message.starts_with("unknown service \""))
    }
}

/// Whether `outer` is `inner` or a table that holds it. A segment without an
/// index (`region`) holds every element of that list (`region[1]`).
fn key_holds(outer: &str, inner: &str) -> bool {
    if outer.is_empty() {
        return false;
    }
    let outer: Vec<&str> = outer.split('.').collect();
    let inner: Vec<&str> = inner.split('.').collect();
    outer.len() <= inner.len()
        && outer
            .iter()
            .zip(&inner)
            .all(|(o, i)| o == i || (!o.contains('[') && i.split('[').next() == Some(*o)))
}

/// How many values may be set aside before reading gives up; each attempt
/// deserializes the whole file again.
const MOST_SET_ASIDE: usize = 200;

/// Reads the file's shape, reporting every problem of shape in one pass
/// (see the module's documentation). `Err` holds the problems when the
/// file could not be read at all: a syntax error, or a problem that could
/// not be located in the tree.
pub(crate) fn read(source: &Source<'_>) -> Result<Read, Vec<ConfigError>> {
    let mut doc = DeTable::parse(source.text).map_err(|e| vec![source.toml_error(&e)])?;
    let mut problems: Vec<ConfigError> = Vec::new();
    let mut set_aside: Vec<SetAside> = Vec::new();
    // Tables (by span) whose key this loop dropped: "missing field" for
    // that key follows from the drop, not from the file.
    let mut dropped: Vec<(Range<usize>, String)> = Vec::new();
    // Values already replaced, by span and depth (a list of tables and its
    // first table share a span): refused again, they are dropped.
    let mut replaced: Vec<(Range<usize>, usize)> = Vec::new();
    for _ in 0..MOST_SET_ASIDE {
        let e = match RawConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(config) => {
                return Ok(Read {
                    config,
                    problems,
                    set_aside,
                })
            }
            Err(e) => e,
        };
        let located = e
            .span()
            .and_then(|span| locate(doc.get_ref(), &span).map(|path| (span, path)));
        let Some((span, path)) = located else {
            problems.push(source.toml_error(&e));
            return Err(problems);
        };
        let key = dotted(&path);
        let Some(node) = node(doc.get_mut(), &path) else {
            problems.push(source.toml_error(&e));
            return Err(problems);
        };
        let node_span = node.span();
        let (start, end) = (
            source.position(node_span.start),
            source.position(node_span.end),
        );
        let aside = SetAside {
            start,
            end,
            key: key.clone(),
        };
        let message = e.message();
        let problem = |message: &str| source.error(span.clone(), key.as_str(), message);
        if replaced.contains(&(node_span.clone(), path.len())) {
            // A neutral value stood in for a refused one and is refused in
            // turn (the value was read as something else): the problem is
            // reported already.
        } else if let Some(field) = between(message, "missing field `", "`") {
            if !dropped.contains(&(node_span.clone(), field.to_string())) {
                report(&mut problems, problem(message));
            }
        } else if message.starts_with("unknown field `") {
            // An unknown key is dropped and nothing else depends on it.
            report(&mut problems, problem(message));
            remove(doc.get_mut(), &path, &mut dropped);
            continue;
        } else {
            let mut shape = error::shape_problem(message, || error::describe(node.get_ref()));
            if message.starts_with("invalid length ") {
                // A list where a table belongs (`[[edge]]` for `[edge]`):
                // serde read its elements as the table's fields by
                // position, and what it said about them does not apply.
                let elements = format!("{key}[");
                problems.retain(|p| !p.key.starts_with(&elements));
                if source.text[node_span.start..].starts_with("[[") {
                    shape.message += &format!("; write [{key}], with single brackets");
                }
            }
            report(&mut problems, problem(&shape.message));
            if let Some(neutral) = shape.neutral {
                let value = DeValue::parse(neutral)
                    .expect("a neutral value parses")
                    .into_inner();
                *node = Spanned::new(node_span.clone(), value);
                replaced.push((node_span, path.len()));
                set_aside.push(aside);
                continue;
            }
        }
        set_aside.push(aside);
        remove(doc.get_mut(), &path, &mut dropped);
    }
    problems.push(ConfigError {
        file: source.file.to_string(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("more than {MOST_SET_ASIDE} problems; stopped reading here"),
    });
    Err(problems)
}

/// Adds `p` to `problems` unless it is there already.
fn report(problems: &mut Vec<ConfigError>, p: ConfigError) {
    if !problems.contains(&p) {
        problems.push(p);
    }
}

/// One step from a table to a value inside it.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The dotted key of a path, as stage two writes keys: `dns.zone[0].ttl`.
fn dotted(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The path to the innermost value whose span, or whose key's span, is
/// `span`: what an error with that span is about. An array of tables and
/// its first table share a span; the table, being deeper, wins.
fn locate(table: &DeTable<'_>, span: &Range<usize>) -> Option<Vec<Step>> {
    fn table_entries(
        t: &DeTable<'_>,
        span: &Range<usize>,
        path: &mut Vec<Step>,
        found: &mut Option<Vec<Step>>,
    ) {
        for (k, v) in t.iter() {
            path.push(Step::Key(k.get_ref().to_string()));
            if k.span() == *span || v.span() == *span {
                *found = Some(path.clone());
            }
            inside(v.get_ref(), span, path, found);
            path.pop();
        }
    }
    fn inside(
        value: &DeValue<'_>,
        span: &Range<usize>,
        path: &mut Vec<Step>,
        found: &mut Option<Vec<Step>>,
    ) {
        match value {
            DeValue::Table(t) => table_entries(t, span, path, found),
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    path.push(Step::Index(i));
                    if v.span() == *span {
                        *found = Some(path.clone());
                    }
                    inside(v.get_ref(), span, path, found);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut found = None;
    table_entries(table, span, &mut Vec::new(), &mut found);
    found
}

/// The value at `path`; the document is not a value of its own, so an
/// empty path has none.
fn node<'a, 'i>(table: &'a mut DeTable<'i>, path: &[Step]) -> Option<&'a mut Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let Step::Key(k) = first else { return None };
    let mut at = table.get_mut(k.as_str())?;
    for step in rest {
        at = match (step, at.get_mut()) {
            (Step::Key(k), DeValue::Table(t)) => t.get_mut(k.as_str())?,
            (Step::Index(i), DeValue::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Drops the value at `path` from its table or list, noting a dropped key
/// under its table's span in `dropped`.
fn remove(table: &mut DeTable<'_>, path: &[Step], dropped: &mut Vec<(Range<usize>, String)>) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    match (last, node(table, parent)) {
        (Step::Key(k), None) if parent.is_empty() => {
            table.remove(k.as_str());
        }
        (Step::Key(k), Some(p)) => {
            let span = p.span();
            if let DeValue::Table(t) = p.get_mut() {
                t.remove(k.as_str());
                dropped.push((span, k.clone()));
            }
        }
        (Step::Index(i), Some(p)) => {
            if let DeValue::Array(a) = p.get_mut() {
                let items = std::mem::replace(a, toml::de::DeArray::new());
                *a = items
                    .into_iter()
                    .enumerate()
                    .filter(|(j, _)| j != i)
                    .map(|(_, v)| v)
                    .collect();
            }
        }
        _ => {}
    }
}

/// The text between `start` and the next `end` in `text`, if it starts with `start`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(start)?;
    rest.split(end).next()
}

/// A string that is read as text with `expecting` naming what it should
/// be, so that a value of the wrong type is refused in those words.
struct Text(&'static str);

impl Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// The text of a duration field; see [`Text`].
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text(A_DURATION)).map(DurationText)
    }
}

/// The text of a size field; see [`Text`].
struct SizeText(String);

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(Text(A_SIZE)).map(SizeText)
    }
}

/// `deserialize_with` for an optional duration: the field keeps the type
/// stage two reads (`Option<S<String>>`), only the wording of a refusal changes.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<S<String>>, D::Error> {
    let v = S::<DurationText>::deserialize(d)?;
    let span = v.span();
    Ok(Some(S::new(span, v.into_inner().0)))
}

/// `deserialize_with` for an optional size; see [`duration`].
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<S<String>>, D::Error> {
    let v = S::<SizeText>::deserialize(d)?;
    let span = v.span();
    Ok(Some(S::new(span, v.into_inner().0)))
}

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
    pub drill: Option<S<RawDrill>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    #[serde(default, deserialize_with = "duration")]
    pub max_age: Option<S<String>>,
    pub steps: Option<S<Vec<i64>>>,
    #[serde(default, deserialize_with = "duration")]
    pub hold: Option<S<String>>,
    pub return_steps: Option<S<Vec<i64>>>,
    pub switchover_at: Option<S<i64>>,
    pub max_error_rate: Option<S<f64>>,
    #[serde(default, deserialize_with = "duration")]
    pub max_p99: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub window: Option<S<String>>,
    pub min_requests: Option<S<i64>>,
    #[serde(default)]
    pub windows: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub name: S<String>,
    #[serde(default = "yes")]
    pub serves_traffic: bool,
    pub capacity_rps: Option<S<i64>>,
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
    #[serde(default, deserialize_with = "duration")]
    pub request_timeout: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub try_timeout: Option<S<String>>,
    pub retry_budget: Option<S<f64>>,
    pub retry_min_per_second: Option<S<i64>>,
    #[serde(default, deserialize_with = "size")]
    pub retry_body_limit: Option<S<String>>,
    #[serde(default, deserialize_with = "size")]
    pub max_body: Option<S<String>>,
    #[serde(default, deserialize_with = "size")]
    pub max_header: Option<S<String>>,
    pub max_request_headers: Option<S<i64>>,
    pub max_response_headers: Option<S<i64>>,
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_grace: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub unready_delay: Option<S<String>>,
    pub tls: Option<S<RawEdgeTls>>,
    pub workers: Option<S<i64>>,
    #[serde(default, deserialize_with = "duration")]
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
    pub guardrails: Option<S<RawGuardrails>>,
    #[serde(default)]
    pub backend: Vec<S<RawBackend>>,
}

/// `[service.NAME.guardrails]`: the service's own drill limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrails {
    pub max_error_rate: Option<S<f64>>,
    #[serde(default, deserialize_with = "duration")]
    pub max_p99: Option<S<String>>,
    pub min_requests: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEdgeTls {
    pub listen: S<String>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    #[serde(default)]
    pub certificate: Vec<S<RawNamedCert>>,
    #[serde(default, deserialize_with = "duration")]
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
    #[serde(default, deserialize_with = "duration")]
    pub base_ejection: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
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
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
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
    pub tls: Option<S<RawControlTls>>,
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub election_timeout: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub rpc_timeout: Option<S<String>>,
    #[serde(default)]
    pub node: Vec<S<RawNode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlTls {
    pub ca: S<String>,
    pub dir: S<String>,
    #[serde(default)]
    pub operators: Vec<S<String>>,
    #[serde(default)]
    pub viewers: Vec<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub reload_check: Option<S<String>>,
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
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<S<String>>,
    pub fall: Option<S<i64>>,
    pub rise: Option<S<i64>>,
    #[serde(default, deserialize_with = "duration")]
    pub hold_down: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
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
    #[serde(default, deserialize_with = "duration")]
    pub lease: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub drift_margin: Option<S<String>>,
    /// The region whose node is the primary when the cluster is first seen.
    pub primary: Option<S<String>>,
    pub scale_hook: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub scale_hook_timeout: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub step_timeout: Option<S<String>>,
    #[serde(default)]
    pub app_roles: Vec<S<String>>,
    #[serde(default)]
    pub app_sources: Vec<S<String>>,
    pub user: Option<S<String>>,
    pub passfile: Option<S<String>>,
    pub sslmode: Option<S<String>>,
    pub sslrootcert: Option<S<String>>,
    pub sslcert: Option<S<String>>,
    pub sslkey: Option<S<String>>,
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
    #[serde(default, deserialize_with = "duration")]
    pub refresh: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub retry: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub expire: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub negative_ttl: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
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
    #[serde(default, deserialize_with = "duration")]
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
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<S<String>>,
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<S<String>>,
    pub fall: Option<S<i64>>,
    pub rise: Option<S<i64>>,
    pub expect_status: Option<S<String>>,
    pub body_contains: Option<S<String>>,
    pub host: Option<S<String>>,
    pub headers: Option<S<BTreeMap<String, S<String>>>>,
}
