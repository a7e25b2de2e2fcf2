//! Listening sockets handed over by the process that started tern, the way
//! systemd's socket activation hands them over (`sd_listen_fds(3)`): file
//! descriptors from 3 on, `LISTEN_FDS` of them, named in order by
//! `LISTEN_FDNAMES` (colon-separated), for the process `LISTEN_PID`.
//!
//! A controller takes the socket named `controller`; an agent takes
//! `writer-proxy.CLUSTER` for each writer proxy. A socket handed over is
//! bound before tern starts, so its address cannot be taken by another
//! process in between (a supervisor or the lab binds it, then starts tern),
//! and a restart under systemd keeps clients' connections queued in it.
//!
//! Where tern differs from `sd_listen_fds`: a missing `LISTEN_PID` is
//! accepted (a parent that forks cannot know its child's pid when it
//! prepares the environment); when it is set it must be this process.
//! Every socket must be a listening TCP socket with a name, and every one
//! must be taken by the role, or tern refuses to start: a socket nobody
//! serves would queue clients that no one answers.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::fd::FromRawFd;

/// The first descriptor handed over (`SD_LISTEN_FDS_START`).
const FIRST_FD: i32 = 3;

/// The sockets handed over, by name.
#[derive(Default)]
pub struct Inherited {
    sockets: BTreeMap<String, TcpListener>,
}

impl Inherited {
    /// Reads and clears `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`, and
    /// takes descriptors 3 to 3 + `LISTEN_FDS` - 1, marked close-on-exec so
    /// that programs tern starts do not inherit them. Call it first thing in
    /// `main`, while the process has one thread (it changes the environment).
    ///
    /// # Errors
    /// A message naming what is wrong: a count or pid that is not a number,
    /// a pid of another process, names missing or repeated, or a descriptor
    /// that is not a listening TCP socket.
    pub fn from_env() -> Result<Inherited, String> {
        let pid = std::env::var("LISTEN_PID").ok();
        let count = std::env::var("LISTEN_FDS").ok();
        let names = std::env::var("LISTEN_FDNAMES").ok();
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(v);
        }
        let Some(count) = count else {
            return Ok(Inherited::default());
        };
        if let Some(pid) = pid {
            let pid: u32 = pid
                .parse()
                .map_err(|_| format!("LISTEN_PID={pid} is not a process id"))?;
            if pid != std::process::id() {
                // Meant for another process (an ancestor's): none are ours.
                return Ok(Inherited::default());
            }
        }
        let count: i32 = count
            .parse()
            .ok()
            .filter(|n| (0..=64).contains(n))
            .ok_or_else(|| format!("LISTEN_FDS={count} is not a count from 0 to 64"))?;
        let names: Vec<&str> = names
            .as_deref()
            .map_or(Vec::new(), |n| n.split(':').collect());
        if names.len() != count as usize {
            return Err(format!(
                "LISTEN_FDNAMES names {} sockets where LISTEN_FDS says {count}",
                names.len()
            ));
        }
        let mut sockets = BTreeMap::new();
        for (i, name) in names.into_iter().enumerate() {
            let fd = FIRST_FD + i as i32;
            check_listening_tcp(fd).map_err(|e| format!("socket {name} (descriptor {fd}): {e}"))?;
            // SAFETY: the descriptor was handed to this process at exec, is
            // a socket (checked above), and is taken here once: nothing else
            // in the process owns it.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            // SAFETY: fcntl on a descriptor this process owns.
            unsafe {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            if sockets.insert(name.to_string(), listener).is_some() {
                return Err(format!("LISTEN_FDNAMES names {name} twice"));
            }
        }
        Ok(Inherited { sockets })
    }

    /// Takes the socket called `name`, if one was handed over.
    pub fn take(&mut self, name: &str) -> Option<TcpListener> {
        self.sockets.remove(name)
    }

    /// Takes every socket whose name starts with `prefix`, keyed by the rest
    /// of the name.
    pub fn take_prefixed(&mut self, prefix: &str) -> BTreeMap<String, TcpListener> {
        let names: Vec<String> = self
            .sockets
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        names
            .into_iter()
            .filter_map(|n| {
                let l = self.sockets.remove(&n)?;
                Some((n[prefix.len()..].to_string(), l))
            })
            .collect()
    }

    /// Fails naming every socket handed over that the role did not take.
    ///
    /// # Errors
    /// "sockets handed over that tern does not serve: NAME ADDR, ...".
    pub fn all_taken(&self) -> Result<(), String> {
        if self.sockets.is_empty() {
            return Ok(());
        }
        let left: Vec<String> = self
            .sockets
            .iter()
            .map(|(n, l)| match l.local_addr() {
                Ok(a) => format!("{n} {a}"),
                Err(_) => n.clone(),
            })
            .collect();
        Err(format!(
            "sockets handed over that tern does not serve: {}",
            left.join(", ")
        ))
    }
}

/// Whether `fd` is an open TCP socket in the listening state.
fn check_listening_tcp(fd: i32) -> Result<(), String> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!(
            "not an open socket ({})",
            std::io::Error::last_os_error()
        ));
    }
    if value == 0 {
        return Err("a socket that is not listening".into());
    }
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return Err("not a stream (TCP) socket".into());
    }
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || !matches!(domain, libc::AF_INET | libc::AF_INET6) {
        return Err("not an IPv4 or IPv6 socket".into());
    }
    Ok(())
}
