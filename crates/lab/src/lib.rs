//! tern's lab: a whole multi-region deployment on one machine, a fault, and
//! numbers about what happened.
//!
//! [`run()`] starts a [`topology::Deployment`] (the sample service, an
//! agent, a controller and an edge per serving region, each region on its own loopback subnet, every
//! cross-region path through the [`wan`] emulator), drives load from
//! clients located in each region ([`load`]), applies a [`scenario`]'s
//! faults, watches the edges' routing through their admin API ([`watch`])
//! and the controllers' audit log ([`control`]), and hands everything to
//! the oracle ([`report`], pure) for the terminal table and JSON.
//! Child processes are started from the `tern` binary itself ([`process`])
//! and die with the lab, however it ends. Alongside, DNS clients
//! ([`dns_client`]) find the edges through the edges' own DNS, and
//! [`dns_report`] compares that path with the HTTP path for the same fault.
//! With PostgreSQL installed, each serving region also has a database node
//! (a primary in us-east, a streaming standby in us-west, [`postgres`]),
//! payments are written through the region's writer proxy, and after the run
//! [`dbrun`] hands the clients' acknowledged writes, the final primary's
//! rows and the controllers' leases to the write oracle ([`db_report`]).

pub mod args;
pub mod certs;
pub mod clock;
pub mod control;
pub mod db_report;
pub mod dbrun;
pub mod dns_client;
pub mod dns_report;
pub mod drill_report;
pub mod html;
pub mod https;
pub mod load;
pub mod postgres;
pub mod process;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod topology;
pub mod wan;
pub mod watch;

pub use args::{LabArgs, Outcome};
pub use run::run;
