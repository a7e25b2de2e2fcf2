//! How `tern lab` ends, through the binary: whatever ends it (SIGTERM,
//! SIGINT, SIGHUP, an error), it stops every process it started and removes
//! its directory from the temporary directory, unless `--keep-dir`; after a
//! signal it ends by that signal. Each lab runs with a temporary directory
//! of the test's own (`TMPDIR`), so what it leaves there is its alone.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Lab {
    child: Child,
    tmp: tempfile::TempDir,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lab {
    fn start(extra: &[&str]) -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["lab", "--seed", "1", "--dns-clients-per-region", "0"])
            .args(extra)
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run tern lab");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lab {
            child,
            tmp,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until the lab prints a line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_secs(1)) {
                Ok(line) => {
                    let found = line.starts_with(prefix);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "the lab never printed {prefix:?}; it printed:\n{}",
            self.seen.join("\n")
        );
    }

    /// The lab's directories in its temporary directory.
    fn dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("tern-lab-"))
            })
            .collect()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on the pid of a child this test started.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits until the lab exits, with everything it printed.
    fn wait(&mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the lab did not exit within 120 s:\n{}",
                self.seen.join("\n")
            );
            // Its output, as it goes, while waiting for it to end.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line);
            }
        };
        self.seen.extend(self.lines.iter());
        (status, self.seen.join("\n"))
    }

    /// Waits until no process of the lab is left (they are named by the
    /// lab's directory in their arguments, PostgreSQL's data directories
    /// included); answers those still there after 30 s.
    fn leftover_processes(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = processes_naming(self.tmp.path());
            if left.is_empty() || Instant::now() > deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pid: command line` of every running process whose arguments name `dir`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // A zombie has an empty command line: it is gone but for its parent's wait.
        if cmdline.contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// Checks a lab that a signal stopped: it ended by that signal, left no
/// process and removed its directory.
fn assert_stopped_cleanly(lab: &mut Lab, signal: i32, what: &str) {
    let (status, output) = lab.wait();
    assert_eq!(
        status.signal(),
        Some(signal),
        "{what}: the lab ended with {status:?}, not by the signal:\n{output}"
    );
    let left = lab.leftover_processes();
    assert!(left.is_empty(), "{what}: processes left behind: {left:#?}");
    let dirs = lab.dirs();
    assert!(
        dirs.is_empty(),
        "{what}: directories left behind: {dirs:?}\n{output}"
    );
    assert!(
        output.contains("every process stopped"),
        "{what}: the lab did not say it stopped:\n{output}"
    );
}

/// Broke when SIGTERM ended the lab at once and left its directory (126 MB
/// with the databases) in the temporary directory: only Ctrl-C was caught.
#[test]
fn sigterm_while_the_load_runs_stops_every_process_and_removes_the_directory() {
    let mut lab = Lab::start(&[]);
    lab.wait_for("[  1.0s] http");
    assert_eq!(lab.dirs().len(), 1, "no lab directory while it runs");
    lab.signal(libc::SIGTERM);
    assert_stopped_cleanly(&mut lab, libc::SIGTERM, "SIGTERM while the load runs");
}

/// A signal while the deployment starts (the databases being made) stops
/// what was started so far.
#[test]
fn sigint_while_starting_stops_every_process_and_removes_the_directory() {
    let mut lab = Lab::start(&[]);
    lab.wait_for("starting:");
    assert_eq!(lab.dirs().len(), 1, "no lab directory while it starts");
    lab.signal(libc::SIGINT);
    assert_stopped_cleanly(&mut lab, libc::SIGINT, "SIGINT while starting");
}

/// A closed terminal (SIGHUP) ends the lab like SIGTERM does.
#[test]
fn sighup_stops_every_process_and_removes_the_directory() {
    let mut lab = Lab::start(&["--db", "off"]);
    lab.wait_for("[  1.0s] http");
    lab.signal(libc::SIGHUP);
    assert_stopped_cleanly(&mut lab, libc::SIGHUP, "SIGHUP");
}

/// With `--keep-dir` the directory stays after a signal, and the lab says where.
#[test]
fn keep_dir_keeps_the_directory_after_sigterm() {
    let mut lab = Lab::start(&["--db", "off", "--keep-dir"]);
    lab.wait_for("[  1.0s] http");
    lab.signal(libc::SIGTERM);
    let (status, output) = lab.wait();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{output}");
    let dirs = lab.dirs();
    assert_eq!(dirs.len(), 1, "{output}");
    assert!(
        output.contains(&format!("lab directory kept: {}", dirs[0].display())),
        "{output}"
    );
    let left = lab.leftover_processes();
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

/// A run that fails (here: no role can start) removes its directory too,
/// and exits with 1.
#[test]
fn a_failed_run_removes_its_directory() {
    let mut lab = Lab::start(&["--db", "off", "--tern-binary", "/bin/false"]);
    let (status, output) = lab.wait();
    assert_eq!(status.code(), Some(1), "{output}");
    // The directory it made, as it said when it started.
    let made = output
        .split_once("WAN emulator (in ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(dir, _)| PathBuf::from(dir))
        .unwrap_or_else(|| panic!("the lab named no directory:\n{output}"));
    assert!(made.starts_with(lab.tmp.path()), "{made:?}");
    assert!(!made.exists(), "{made:?} left behind:\n{output}");
    let dirs = lab.dirs();
    assert!(
        dirs.is_empty(),
        "directories left behind: {dirs:?}\n{output}"
    );
}
