//! Whether a node's client authentication rules (`pg_hba.conf`) leave the
//! writer proxy the only door for application roles.
//!
//! The rules are read from the server's own parse of the file (the
//! `pg_hba_file_rules` view, PostgreSQL 10 and later, superuser), so what is
//! judged is what the server will apply, include files and all. The
//! judgement, [`side_doors`], is pure: PostgreSQL takes the first rule whose
//! connection type, database, user and address match (PostgreSQL manual,
//! "The pg_hba.conf File"), so a rule admits a role from a source unless an
//! earlier `reject` rule already caught every connection of that type.

use std::net::IpAddr;

use ipnet::IpNet;

/// One rule as the server parsed it: a row of `pg_hba_file_rules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbaRule {
    /// Line in the file, 1-based.
    pub line: i32,
    /// `local`, `host`, `hostssl`, `hostnossl`, `hostgssenc` or `hostnogssenc`;
    /// `None` for a line the server could not parse.
    pub kind: Option<String>,
    /// Database names or keywords (`all`, `replication`, `sameuser`, ...).
    pub databases: Vec<String>,
    /// Role names or keywords (`all`, `+group`, `/regex`).
    pub users: Vec<String>,
    /// An address, a keyword (`all`, `samehost`, `samenet`) or a host name;
    /// `None` for `local`.
    pub address: Option<String>,
    /// The netmask of `address`, when the file gave an address and a mask
    /// or a CIDR length (the server splits the latter).
    pub netmask: Option<String>,
    /// `trust`, `scram-sha-256`, `reject`, ...
    pub method: Option<String>,
    /// The server's complaint about this line, if it could not use it.
    pub error: Option<String>,
}

impl HbaRule {
    fn matches_role(&self, role: &str) -> bool {
        self.users.iter().any(|u| {
            // A group (`+name`) or a regular expression (`/re`) may match:
            // without resolving it, count it as matching (fail closed).
            u == "all" || u == role || u.starts_with('+') || u.starts_with('/')
        })
    }

    /// A rule for replication connections only takes no SQL session.
    fn replication_only(&self) -> bool {
        !self.databases.is_empty() && self.databases.iter().all(|d| d == "replication")
    }

    fn is_local(&self) -> bool {
        self.kind.as_deref() == Some("local")
    }

    fn network(&self) -> Option<IpNet> {
        let addr: IpAddr = self.address.as_deref()?.parse().ok()?;
        match self.netmask.as_deref() {
            Some(mask) => IpNet::with_netmask(addr, mask.parse().ok()?).ok(),
            None => Some(IpNet::from(addr)),
        }
    }

    /// Whether this rule covers every source of its connection type, so
    /// no later rule of that type is ever reached.
    fn covers_every_source(&self) -> bool {
        if self.is_local() {
            return true;
        }
        if self.address.as_deref() == Some("all") {
            return true;
        }
        self.network().is_some_and(|n| n.prefix_len() == 0)
    }

    fn text(&self) -> String {
        format!(
            "{} {} {} {}{}",
            self.kind.as_deref().unwrap_or("?"),
            self.databases.join(","),
            self.users.join(","),
            match (&self.address, &self.netmask) {
                (Some(a), Some(m)) => format!("{a} {m} "),
                (Some(a), None) => format!("{a} "),
                _ => String::new(),
            },
            self.method.as_deref().unwrap_or("?"),
        )
    }
}

/// What is wrong with `rules` for keeping `roles` to the writer proxies,
/// which connect from `sources`: one line per rule that admits one of the
/// roles over a unix socket or from an address outside `sources` (or from a
/// host name or keyword tern cannot check), and one per line the server
/// could not parse. Empty when the proxies are the only door.
pub fn side_doors(rules: &[HbaRule], roles: &[String], sources: &[IpNet]) -> Vec<String> {
    let mut problems = Vec::new();
    for rule in rules {
        if let Some(e) = &rule.error {
            problems.push(format!(
                "line {}: PostgreSQL cannot use this line: {e}",
                rule.line
            ));
        }
    }
    for role in roles {
        // Once a reject rule caught every local (or every TCP) connection
        // of the role, later rules of that kind are never reached.
        let (mut local_closed, mut tcp_closed) = (false, false);
        for rule in rules.iter().filter(|r| r.error.is_none()) {
            if !rule.matches_role(role) || rule.replication_only() {
                continue;
            }
            let local = rule.is_local();
            if (local && local_closed) || (!local && tcp_closed) {
                continue;
            }
            if rule.method.as_deref() == Some("reject") {
                // Only a rule for every database and every source closes
                // the door for sure; a narrower reject proves nothing.
                let every_db = rule.databases.iter().any(|d| d == "all");
                let plain = matches!(rule.kind.as_deref(), Some("local" | "host"));
                if every_db && plain && rule.covers_every_source() {
                    if local {
                        local_closed = true;
                    } else {
                        tcp_closed = true;
                    }
                }
                continue;
            }
            let why = if local {
                Some("over a unix socket, past the writer proxy".to_string())
            } else {
                match rule.network() {
                    Some(net) if sources.iter().any(|s| s.contains(&net)) => None,
                    Some(net) => Some(format!(
                        "from {net}, which holds addresses that are not a writer proxy's ({})",
                        list(sources)
                    )),
                    None => Some(format!(
                        "from \"{}\", which tern cannot check against the writer proxies' addresses ({})",
                        rule.address.as_deref().unwrap_or("?"),
                        list(sources)
                    )),
                }
            };
            if let Some(why) = why {
                problems.push(format!(
                    "line {} ({}) admits application role {role} {why}",
                    rule.line,
                    rule.text()
                ));
            }
        }
    }
    problems
}

fn list(sources: &[IpNet]) -> String {
    if sources.is_empty() {
        return "none given".into();
    }
    sources
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: i32, kind: &str, db: &str, user: &str, addr: &str, method: &str) -> HbaRule {
        let (address, netmask) = match addr.split_once(' ') {
            Some((a, m)) => (Some(a.to_string()), Some(m.to_string())),
            None if addr.is_empty() => (None, None),
            None => (Some(addr.to_string()), None),
        };
        HbaRule {
            line,
            kind: Some(kind.into()),
            databases: db.split(',').map(String::from).collect(),
            users: user.split(',').map(String::from).collect(),
            address,
            netmask,
            method: Some(method.into()),
            error: None,
        }
    }

    fn doors(rules: &[HbaRule]) -> Vec<i32> {
        let roles = vec!["app".to_string()];
        let sources: Vec<IpNet> = vec![
            "10.0.1.5/32".parse().unwrap(),
            "10.0.2.0/28".parse().unwrap(),
        ];
        side_doors(rules, &roles, &sources)
            .iter()
            .map(|p| {
                p.trim_start_matches("line ")
                    .split([' ', ':'])
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn a_rule_for_the_proxies_addresses_only_is_no_door() {
        assert!(doors(&[
            rule(
                1,
                "host",
                "all",
                "app",
                "10.0.1.5 255.255.255.255",
                "scram-sha-256"
            ),
            rule(
                2,
                "host",
                "all",
                "app",
                "10.0.2.0 255.255.255.240",
                "scram-sha-256"
            ),
            rule(
                3,
                "host",
                "all",
                "app",
                "10.0.2.4 255.255.255.255",
                "scram-sha-256"
            ),
            rule(4, "host", "all", "app", "all", "reject"),
            rule(5, "host", "all", "all", "0.0.0.0 0.0.0.0", "trust"),
        ])
        .is_empty());
    }

    #[test]
    fn rules_that_admit_the_role_past_the_proxy_are_named() {
        let rules = [
            rule(1, "local", "all", "all", "", "trust"),
            rule(
                2,
                "host",
                "all",
                "all",
                "127.0.0.1 255.255.255.255",
                "trust",
            ),
            rule(3, "host", "all", "+writers", "10.0.0.0 255.0.0.0", "md5"),
            rule(4, "hostssl", "all", "app", "samenet", "md5"),
            rule(5, "host", "all", "other", "0.0.0.0 0.0.0.0", "trust"),
            rule(6, "host", "replication", "all", "0.0.0.0 0.0.0.0", "trust"),
        ];
        assert_eq!(doors(&rules), vec![1, 2, 3, 4]);
    }

    #[test]
    fn an_earlier_reject_for_every_source_closes_what_follows() {
        let rules = [
            rule(1, "local", "all", "app", "", "reject"),
            rule(2, "local", "all", "all", "", "trust"),
            rule(3, "host", "all", "app", "0.0.0.0 0.0.0.0", "reject"),
            rule(4, "host", "all", "all", "0.0.0.0 0.0.0.0", "trust"),
        ];
        assert!(doors(&rules).is_empty());
        // A reject narrower than every source, or only for one database,
        // proves nothing about the rules after it.
        let rules = [
            rule(1, "host", "all", "app", "192.168.0.0 255.255.0.0", "reject"),
            rule(2, "host", "sales", "app", "0.0.0.0 0.0.0.0", "reject"),
            rule(3, "host", "all", "all", "0.0.0.0 0.0.0.0", "trust"),
        ];
        assert_eq!(doors(&rules), vec![3]);
    }

    #[test]
    fn a_line_the_server_cannot_use_is_reported() {
        let mut bad = rule(7, "host", "all", "all", "", "trust");
        bad.kind = None;
        bad.error = Some("invalid IP address".into());
        assert_eq!(doors(&[bad]), vec![7]);
    }
}
