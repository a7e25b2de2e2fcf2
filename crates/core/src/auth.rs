//! Who may do what on the control plane: the [`Principal`] a client
//! certificate names, and [`authorize`], the one table of rules every
//! controller applies before it acts on a request.
//!
//! A principal is written in the certificate as a URI subject alternative
//! name in the SPIFFE form (`spiffe://tern/ROLE/NAME`, SPIFFE X.509-SVID,
//! <https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md>):
//! the identity is the URI, not a host name, so one certificate serves a
//! process whatever address it is reached at.
//!
//! The rules (issue "deployable across real regions", section 2):
//! - a **controller** peer may do anything (Raft, and requests a follower
//!   forwards after authorizing them itself);
//! - an **agent** of region R may report R's observations and R's
//!   replication, acquire, renew and release only R's leases, report the
//!   steps of a plan whose source or target is R, and record R's node events;
//! - an **edge** of region R may read, and report what R's clients saw
//!   during a drill (its guardrail windows); a **viewer** may only read;
//! - an **operator** may read and run the operator commands (`route set`,
//!   `failover`, `switchover`, `failover cancel`, `members`, lease release).
//!
//! Commands only the leader makes for itself (verdicts, leader changes,
//! step timeouts) are refused to every client but a controller peer.

use std::fmt;

use crate::control::Command;
use crate::failover::{ClusterState, PlanKind};

/// The SPIFFE trust domain of tern's identities.
pub const TRUST_DOMAIN: &str = "tern";

/// What a certificate lets its holder be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Controller,
    Agent,
    Edge,
    Operator,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Controller,
        Role::Agent,
        Role::Edge,
        Role::Operator,
        Role::Viewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
            Role::Edge => "edge",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// An authenticated caller: a role and a name. The name is the controller's
/// id, the agent's or edge's region, or the operator's or viewer's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    pub role: Role,
    pub name: String,
}

impl Principal {
    pub fn new(role: Role, name: impl Into<String>) -> Principal {
        Principal {
            role,
            name: name.into(),
        }
    }

    /// `spiffe://tern/ROLE/NAME`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/{}/{}",
            self.role.as_str(),
            self.name
        )
    }

    /// Reads `spiffe://tern/ROLE/NAME`. Errors say what is wrong with the URI.
    pub fn from_spiffe_id(uri: &str) -> Result<Principal, String> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("\"{uri}\" is not a spiffe:// URI"))?;
        let mut parts = rest.split('/');
        let (Some(domain), Some(role), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "\"{uri}\" is not of the form spiffe://{TRUST_DOMAIN}/ROLE/NAME"
            ));
        };
        if domain != TRUST_DOMAIN {
            return Err(format!(
                "\"{uri}\" is in trust domain \"{domain}\", not \"{TRUST_DOMAIN}\""
            ));
        }
        let role = Role::parse(role).ok_or_else(|| {
            format!("\"{uri}\" names role \"{role}\"; expected controller, agent, edge, operator or viewer")
        })?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!("\"{uri}\" has no valid name after the role"));
        }
        Ok(Principal::new(role, name))
    }

    /// The file stem `tern certs init` writes this principal's certificate
    /// and key under: `ROLE-NAME` (`controller-1`, `agent-us-east`).
    pub fn file_stem(&self) -> String {
        format!("{}-{}", self.role.as_str(), self.name)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.name)
    }
}

/// What a request asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Raft between controllers (append, vote, snapshot).
    Raft,
    /// Read status, events, routing, clusters or metrics.
    Read,
    /// Report probe results seen from `vantage`.
    Observe { vantage: &'a str },
    /// Report the replication state of `region`'s node.
    Replicate { region: &'a str },
    /// Commit a command. `cluster` is the command's cluster as the state
    /// holds it now (for plan steps: which regions the plan involves).
    Write {
        command: &'a Command,
        cluster: Option<&'a ClusterState>,
    },
    /// Add or remove controllers.
    Members,
    /// Report what `region`'s clients saw during a drill (its edges).
    Guardrails { region: &'a str },
}

/// Why a request was refused: says who asked and what they may not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {what}")]
pub struct Denied {
    pub principal: String,
    pub what: String,
}

/// Decides whether `who` may do `action` (the rules are in the module
/// documentation).
pub fn authorize(who: &Principal, action: Action<'_>) -> Result<(), Denied> {
    let deny = |what: String| {
        Err(Denied {
            principal: who.to_string(),
            what,
        })
    };
    if who.role == Role::Controller {
        return Ok(());
    }
    let agent_of = |region: &str| who.role == Role::Agent && who.name == region;
    match action {
        Action::Raft => deny("take part in Raft (controllers only)".into()),
        Action::Read => Ok(()),
        Action::Observe { vantage } if agent_of(vantage) => Ok(()),
        Action::Observe { vantage } => deny(format!(
            "report observations from {vantage} (only that region's agent may)"
        )),
        Action::Replicate { region } if agent_of(region) => Ok(()),
        Action::Replicate { region } => deny(format!(
            "report the replication of {region} (only that region's agent may)"
        )),
        Action::Guardrails { region } if who.role == Role::Edge && who.name == region => Ok(()),
        Action::Guardrails { region } => deny(format!(
            "report what clients in {region} saw (only that region's edge may)"
        )),
        Action::Members if who.role == Role::Operator => Ok(()),
        Action::Members => deny("change the controllers' membership (operators only)".into()),
        Action::Write { command, cluster } => write(who, command, cluster, &agent_of, deny),
    }
}

fn write(
    who: &Principal,
    command: &Command,
    cluster: Option<&ClusterState>,
    agent_of: &dyn Fn(&str) -> bool,
    deny: impl Fn(String) -> Result<(), Denied>,
) -> Result<(), Denied> {
    let operator = who.role == Role::Operator;
    match command {
        Command::SetWeights { service, .. } if !operator => {
            deny(format!("set the weights of {service} (operators only)"))
        }
        Command::CancelPlan { cluster, .. } if !operator => {
            deny(format!("cancel a plan of {cluster} (operators only)"))
        }
        Command::StartFailover { cluster, .. } if !operator => deny(format!(
            "start a failover or switchover of {cluster} (operators only)"
        )),
        Command::SetWeights { .. } | Command::CancelPlan { .. } | Command::StartFailover { .. } => {
            Ok(())
        }
        Command::ReleaseLease {
            cluster, holder, ..
        } if !operator && !agent_of(holder) => deny(format!(
            "release {holder}'s lease of {cluster} (only {holder}'s agent or an operator may)"
        )),
        Command::ReleaseLease { .. } => Ok(()),
        Command::AcquireLease { cluster, holder }
        | Command::RenewLease {
            cluster, holder, ..
        } if !agent_of(holder) => deny(format!(
            "take or renew {holder}'s lease of {cluster} (only {holder}'s agent may)"
        )),
        Command::AcquireLease { .. } | Command::RenewLease { .. } => Ok(()),
        Command::NodeEvent {
            cluster, region, ..
        } if !agent_of(region) => deny(format!(
            "record a node event of {region} in {cluster} (only {region}'s agent may)"
        )),
        Command::NodeEvent { .. } => Ok(()),
        Command::PlanStep {
            cluster: name,
            plan_id,
            step,
            ..
        } => {
            let involved = cluster
                .and_then(|c| c.plan.as_ref())
                .filter(|p| p.id == *plan_id)
                .is_some_and(|p| agent_of(&p.from) || agent_of(&p.to));
            if involved {
                Ok(())
            } else {
                deny(format!(
                    "report step {} of plan {plan_id} of {name} (only the agents of the plan's source and target regions may)",
                    step.as_str()
                ))
            }
        }
        Command::StartDrill { spec, .. } if !operator => {
            deny(format!("start a drill of {} (operators only)", spec.region))
        }
        Command::AbortDrill { .. } if !operator => deny("abort a drill (operators only)".into()),
        Command::StartDrill { .. } | Command::AbortDrill { .. } => Ok(()),
        Command::Verdict(_)
        | Command::LeaderChanged { .. }
        | Command::PlanTimedOut { .. }
        | Command::DrillAdvance { .. }
        | Command::DrillWatch { .. } => {
            deny("write a command only the leader makes (controllers only)".into())
        }
    }
}

/// The command with the authenticated principal written into its audit
/// fields: an operator's `actor` becomes `PRINCIPAL (WHAT THE CLIENT SAID)`,
/// and a plan an operator starts without an actor carries the principal in
/// its evidence. Clients cannot claim to be someone else in the audit log.
pub fn attribute(who: &Principal, command: Command) -> Command {
    let said = |actor: String| format!("{who} ({actor})");
    match command {
        Command::SetWeights {
            service,
            weights,
            force,
            actor,
        } => Command::SetWeights {
            service,
            weights,
            force,
            actor: said(actor),
        },
        Command::CancelPlan { cluster, actor } => Command::CancelPlan {
            cluster,
            actor: said(actor),
        },
        Command::StartDrill {
            spec,
            actor,
            wall_ms,
        } => Command::StartDrill {
            spec,
            actor: said(actor),
            wall_ms,
        },
        Command::AbortDrill { id, reason, actor } => Command::AbortDrill {
            id,
            reason,
            actor: said(actor),
        },
        Command::StartFailover {
            cluster,
            to,
            kind,
            lag_bytes,
            mut evidence,
        } => {
            let kind = match kind {
                PlanKind::Forced { actor } => PlanKind::Forced { actor: said(actor) },
                PlanKind::Switchover { actor } => PlanKind::Switchover { actor: said(actor) },
                other => {
                    evidence.insert(0, format!("requested by {who}"));
                    other
                }
            };
            Command::StartFailover {
                cluster,
                to,
                kind,
                lag_bytes,
                evidence,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::{ClusterSpec, Step};

    fn p(role: Role, name: &str) -> Principal {
        Principal::new(role, name)
    }

    #[test]
    fn spiffe_ids_round_trip_and_bad_ones_say_why() {
        let agent = p(Role::Agent, "us-east");
        assert_eq!(agent.spiffe_id(), "spiffe://tern/agent/us-east");
        assert_eq!(Principal::from_spiffe_id(&agent.spiffe_id()), Ok(agent));
        for (bad, says) in [
            ("https://tern/agent/x", "not a spiffe"),
            ("spiffe://other/agent/x", "trust domain"),
            ("spiffe://tern/root/x", "role \"root\""),
            ("spiffe://tern/agent", "not of the form"),
            ("spiffe://tern/agent/x/y", "not of the form"),
            ("spiffe://tern/agent/", "no valid name"),
        ] {
            let e = Principal::from_spiffe_id(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn reads_are_open_to_every_role_and_raft_only_to_controllers() {
        for role in Role::ALL {
            let who = p(role, "x");
            assert!(authorize(&who, Action::Read).is_ok());
            assert_eq!(
                authorize(&who, Action::Raft).is_ok(),
                role == Role::Controller
            );
        }
    }

    #[test]
    fn an_agent_reports_only_for_its_own_region() {
        let east = p(Role::Agent, "us-east");
        assert!(authorize(&east, Action::Observe { vantage: "us-east" }).is_ok());
        assert!(authorize(&east, Action::Observe { vantage: "us-west" }).is_err());
        assert!(authorize(&east, Action::Replicate { region: "us-east" }).is_ok());
        let e = authorize(&east, Action::Replicate { region: "us-west" }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "agent us-east may not report the replication of us-west (only that region's agent may)"
        );
        let edge = p(Role::Edge, "us-east");
        assert!(authorize(&edge, Action::Observe { vantage: "us-east" }).is_err());
    }

    #[test]
    fn leases_belong_to_their_regions_agent() {
        let east = p(Role::Agent, "us-east");
        let renew = |holder: &str| Command::RenewLease {
            cluster: "db".into(),
            holder: holder.into(),
            epoch: 3,
        };
        let w = |c: &Command| {
            authorize(
                &east,
                Action::Write {
                    command: c,
                    cluster: None,
                },
            )
        };
        assert!(w(&renew("us-east")).is_ok());
        assert!(w(&renew("us-west")).is_err());
        let release = Command::ReleaseLease {
            cluster: "db".into(),
            holder: "us-west".into(),
            epoch: 3,
        };
        assert!(w(&release).is_err());
        let op = p(Role::Operator, "alice");
        assert!(authorize(
            &op,
            Action::Write {
                command: &release,
                cluster: None
            }
        )
        .is_ok());
        // An operator does not renew leases: only the holder's agent does.
        assert!(authorize(
            &op,
            Action::Write {
                command: &renew("us-east"),
                cluster: None
            }
        )
        .is_err());
    }

    #[test]
    fn operator_commands_need_the_operator_role() {
        let commands = [
            Command::SetWeights {
                service: "api".into(),
                weights: vec![("us-east".into(), 0)],
                force: false,
                actor: "x".into(),
            },
            Command::CancelPlan {
                cluster: "db".into(),
                actor: "x".into(),
            },
            Command::StartFailover {
                cluster: "db".into(),
                to: "us-west".into(),
                kind: PlanKind::Automatic,
                lag_bytes: None,
                evidence: vec![],
            },
        ];
        for command in &commands {
            for role in Role::ALL {
                let allowed = authorize(
                    &p(role, "us-east"),
                    Action::Write {
                        command,
                        cluster: None,
                    },
                )
                .is_ok();
                assert_eq!(
                    allowed,
                    matches!(role, Role::Operator | Role::Controller),
                    "{role:?} {command:?}"
                );
            }
        }
        assert!(authorize(&p(Role::Operator, "a"), Action::Members).is_ok());
        assert!(authorize(&p(Role::Edge, "a"), Action::Members).is_err());
    }

    #[test]
    fn plan_steps_come_only_from_the_plans_regions() {
        let mut c = ClusterState::new(ClusterSpec {
            sync: false,
            rpo_budget: 1000,
            regions: vec!["us-east".into(), "us-west".into(), "eu".into()],
            primary: "us-east".into(),
            scale_hook: false,
            step_timeout: std::time::Duration::from_secs(10),
        });
        let step = Command::PlanStep {
            cluster: "db".into(),
            plan_id: 1,
            step: Step::Fence,
            ok: true,
            detail: String::new(),
            lsn: None,
        };
        let by = |region: &str, c: &ClusterState| {
            authorize(
                &p(Role::Agent, region),
                Action::Write {
                    command: &step,
                    cluster: Some(c),
                },
            )
            .is_ok()
        };
        // No plan: nobody's step is taken.
        assert!(!by("us-east", &c));
        c.on_lease("us-east", 1);
        let id = c
            .start(
                "db",
                "us-west",
                PlanKind::Automatic,
                Some(0),
                true,
                vec![],
                std::time::Duration::from_secs(1),
                &mut vec![],
            )
            .expect("a plan starts");
        assert_eq!(id, 1);
        assert!(by("us-east", &c));
        assert!(by("us-west", &c));
        assert!(!by("eu", &c));
        assert!(authorize(
            &p(Role::Operator, "alice"),
            Action::Write {
                command: &step,
                cluster: Some(&c)
            }
        )
        .is_err());
    }

    #[test]
    fn leader_only_commands_are_refused_to_clients() {
        let command = Command::PlanTimedOut {
            cluster: "db".into(),
            plan_id: 1,
            step: Step::Fence,
        };
        for role in [Role::Agent, Role::Edge, Role::Operator, Role::Viewer] {
            assert!(authorize(
                &p(role, "us-east"),
                Action::Write {
                    command: &command,
                    cluster: None
                }
            )
            .is_err());
        }
    }

    #[test]
    fn the_audit_names_the_certificate_not_what_the_client_claims() {
        let who = p(Role::Operator, "alice");
        let command = attribute(
            &who,
            Command::SetWeights {
                service: "api".into(),
                weights: vec![],
                force: false,
                actor: "root (tern route set)".into(),
            },
        );
        let Command::SetWeights { actor, .. } = command else {
            unreachable!()
        };
        assert_eq!(actor, "operator alice (root (tern route set))");
        let command = attribute(
            &who,
            Command::StartFailover {
                cluster: "db".into(),
                to: "us-west".into(),
                kind: PlanKind::Automatic,
                lag_bytes: None,
                evidence: vec!["requested with tern failover".into()],
            },
        );
        let Command::StartFailover { evidence, .. } = command else {
            unreachable!()
        };
        assert_eq!(evidence[0], "requested by operator alice");
    }
}
