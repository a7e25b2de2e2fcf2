//! The password file, read the way libpq reads it (PostgreSQL
//! documentation, "The Password File"), for the agent's own connection
//! (tokio-postgres does not read it): lines of
//! `hostname:port:database:username:password`, `#` comments, `*` matching
//! anything in the first four fields, `\:` and `\\` escapes; the first
//! matching line wins. A Unix-socket connection matches `localhost`. As
//! libpq does, a file that its group or others may read is ignored (with a
//! warning), and the file is `passfile` if given, else `PGPASSFILE`, else
//! `~/.pgpass`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// What one connection logs in as, to look up in the file.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// The host name or address; `localhost` for a Unix socket.
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The file libpq would read: `passfile`, else `PGPASSFILE`, else
/// `$HOME/.pgpass`.
pub fn path(passfile: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = passfile {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("PGPASSFILE") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The password for `login` from the file at `path(passfile)`, if the file
/// exists, is private to its owner and has a matching line.
pub fn password(passfile: Option<&Path>, login: Login<'_>) -> Option<String> {
    let file = path(passfile)?;
    let meta = std::fs::metadata(&file).ok()?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "password file has group or world access; ignored (as libpq does); chmod 0600 it"
        );
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    lookup(&text, login)
}

/// The password of the first line of `text` matching `login`.
pub fn lookup(text: &str, login: Login<'_>) -> Option<String> {
    let port = login.port.to_string();
    let wanted = [login.host, port.as_str(), login.database, login.user];
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(fields)
        .find(|f| {
            f[..4]
                .iter()
                .zip(wanted)
                .all(|(have, want)| have == "*" || have == want)
        })
        .map(|mut f| f.swap_remove(4))
}

/// The five fields of a line, unescaped; `None` for a line with fewer.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => {
                if let Some(next) = chars.next() {
                    out.last_mut().expect("one field").push(next);
                }
            }
            ':' if out.len() < 5 => out.push(String::new()),
            _ => out.last_mut().expect("one field").push(ch),
        }
    }
    (out.len() == 5).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login<'a>(host: &'a str, user: &'a str) -> Login<'a> {
        Login {
            host,
            port: 5432,
            database: "postgres",
            user,
        }
    }

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let text = "# comment\n\
                    10.0.1.5:5432:postgres:tern:first\n\
                    *:*:*:tern:any\\:host\n\
                    localhost:5432:*:postgres:sock\\\\et\n\
                    broken:line\n";
        assert_eq!(
            lookup(text, login("10.0.1.5", "tern")).as_deref(),
            Some("first")
        );
        assert_eq!(
            lookup(text, login("10.0.2.5", "tern")).as_deref(),
            Some("any:host")
        );
        assert_eq!(
            lookup(text, login("localhost", "postgres")).as_deref(),
            Some("sock\\et")
        );
        assert_eq!(lookup(text, login("10.0.2.5", "postgres")), None);
    }

    #[test]
    fn a_password_may_contain_colons_after_the_fourth_field() {
        let text = "h:1:d:u:pa:ss\n";
        let l = Login {
            host: "h",
            port: 1,
            database: "d",
            user: "u",
        };
        assert_eq!(lookup(text, l).as_deref(), Some("pa:ss"));
    }

    #[test]
    fn a_file_others_can_read_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(password(Some(&file), login("h", "u")), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            password(Some(&file), login("h", "u")).as_deref(),
            Some("secret")
        );
    }
}
