//! tern's control-plane protocol: what the roles say to the controllers and
//! how they say it, without the controllers' machinery (no openraft, no redb).
//!
//! [`api`] holds the wire shapes of the controller API (status, routing,
//! observations, replication reports, writes and their answers, membership
//! changes) and the typed error body every endpoint answers a failure with
//! ([`api::ApiError`]). [`http`] is the JSON-over-HTTP transport with a
//! deadline on every call, whose [`http::CallError`] says whether the
//! controllers refused a command, had no quorum, or could not be reached.
//! [`ControllerClient`] is what agents, edges, the lab and the operator
//! commands use: it tries each controller until one answers. [`lifecycle`]
//! is the one shutdown contract of every role: a cancellation token handed
//! down, tasks joined, a grace time, then force.
//!
//! [`tls`] is the control plane's mutual TLS: certificates whose URI name is
//! the holder's principal (`spiffe://tern/ROLE/NAME`), reloaded without a
//! restart; [`pki`] makes a private CA and those certificates
//! (`tern certs init`). The rules of who may do what are in
//! [`tern_core::auth`].

pub mod api;
pub mod client;
pub mod http;
pub mod lifecycle;
pub mod pki;
pub mod tls;

pub use client::ControllerClient;

/// A controller's id in the Raft group (`[[controller.node]] id`).
pub type NodeId = u64;

/// Environment switch for the oracle's own test: an agent started with it
/// set to `1` never fences its node, to show that the lab counts the
/// writes this lets through.
pub const UNSAFE_NO_SELF_FENCE: &str = "TERN_UNSAFE_NO_SELF_FENCE";
