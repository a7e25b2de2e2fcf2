//! tern's pure core: the decisions, without the I/O.
//!
//! [`config`] loads and validates the TOML file into a [`config::Config`].
//! [`health`] turns probe results into up/down states with `fall`/`rise`
//! thresholds, [`outlier`] ejects backends that fail real requests,
//! [`routing`] picks the backend for a request from a service's policy, and
//! [`retry`] says when a request may be sent again and rations retries.
//! [`verdict`] aggregates probe results from several vantage points into
//! region verdicts with anti-flap rules, and [`lease`] grants the leases and
//! epochs that fence a database primary; the controller builds on both.
//! [`dns`] picks the targets of a DNS policy record for a query, from health,
//! weights and the client's network.
//! Nothing here opens a socket, spawns a task or reads a clock: time and
//! randomness are arguments, so every decision is a table-driven test away.
//! The role crates (edge, lab) own the runtime and call into this crate.

pub mod auth;
pub mod config;
pub mod control;
pub mod dns;
pub mod drill;
pub mod failover;
pub mod health;
pub mod lease;
pub mod outlier;
pub mod retry;
pub mod routing;
pub mod units;
pub mod verdict;
