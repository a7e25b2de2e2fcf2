//! The one shutdown contract of every role (controller, agent, edge, sample
//! service): the caller hands down a [`CancellationToken`]; the role spawns
//! its tasks into a [`Tasks`] set whose token is a child of it; on the way
//! out it calls [`Tasks::shutdown`], which cancels the token, joins every
//! task for up to a grace time, then aborts what is left. Every task's end
//! is reported as an [`Exit`], so a panic is never swallowed.
//!
//! A role that must react when one of its tasks dies early (the agent
//! closes its writer proxy when its database loop panics) waits on
//! [`Tasks::next_exit`] beside the token.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// How a task of a [`Tasks`] set ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It returned.
    Finished { task: String },
    /// It panicked; `message` is the panic's payload when it was a string.
    Panicked { task: String, message: String },
    /// It was still running after the grace time and was aborted.
    Aborted { task: String },
}

impl Exit {
    /// The task's name, as given to [`Tasks::spawn`].
    pub fn task(&self) -> &str {
        match self {
            Exit::Finished { task } | Exit::Panicked { task, .. } | Exit::Aborted { task } => task,
        }
    }

    pub fn is_panic(&self) -> bool {
        matches!(self, Exit::Panicked { .. })
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Finished { task } => write!(f, "{task} finished"),
            Exit::Panicked { task, message } => write!(f, "{task} panicked: {message}"),
            Exit::Aborted { task } => write!(f, "{task} aborted after the grace time"),
        }
    }
}

/// A role's named tasks and the token that stops them.
pub struct Tasks {
    stop: CancellationToken,
    set: JoinSet<()>,
    names: BTreeMap<Id, String>,
}

impl Tasks {
    /// A task set whose token is cancelled when `parent` is, or by
    /// [`Tasks::shutdown`].
    pub fn new(parent: &CancellationToken) -> Tasks {
        Tasks {
            stop: parent.child_token(),
            set: JoinSet::new(),
            names: BTreeMap::new(),
        }
    }

    /// The token the tasks watch: cancelled when the role stops.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Spawns a task on the current runtime under `name` (for the logs and
    /// the [`Exit`] it ends with).
    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name.into());
    }

    /// How many tasks have not been joined yet.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Waits for the next task to end, however it ends; `None` when none is
    /// left. Cancel-safe: a task that ends while this is dropped is
    /// reported by the next call.
    pub async fn next_exit(&mut self) -> Option<Exit> {
        let joined = self.set.join_next_with_id().await?;
        Some(self.exit_of(joined))
    }

    /// Cancels the token, joins every task for up to `grace`, then aborts
    /// the rest. Returns how each task ended; panics and aborts are also
    /// logged.
    pub async fn shutdown(mut self, grace: Duration) -> Vec<Exit> {
        self.stop.cancel();
        let mut exits = Vec::new();
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.set.join_next_with_id()).await {
                Ok(Some(joined)) => exits.push(self.exit_of(joined)),
                Ok(None) => break,
                Err(_) => {
                    self.set.abort_all();
                    while let Some(joined) = self.set.join_next_with_id().await {
                        let exit = match joined {
                            Err(e) if e.is_cancelled() => Exit::Aborted {
                                task: self.names.remove(&e.id()).unwrap_or_default(),
                            },
                            other => self.exit_of(other),
                        };
                        exits.push(exit);
                    }
                    break;
                }
            }
        }
        for exit in &exits {
            match exit {
                Exit::Finished { .. } => {}
                Exit::Panicked { .. } => tracing::error!("{exit}"),
                Exit::Aborted { .. } => tracing::warn!("{exit}"),
            }
        }
        exits
    }

    fn exit_of(&mut self, joined: Result<(Id, ()), JoinError>) -> Exit {
        match joined {
            Ok((id, ())) => Exit::Finished {
                task: self.names.remove(&id).unwrap_or_default(),
            },
            Err(e) => {
                let task = self.names.remove(&e.id()).unwrap_or_default();
                if e.is_cancelled() {
                    return Exit::Aborted { task };
                }
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                Exit::Panicked { task, message }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_joins_cancelled_tasks_and_reports_panics() {
        let parent = CancellationToken::new();
        let mut tasks = Tasks::new(&parent);
        let t = tasks.token();
        tasks.spawn("waits", async move { t.cancelled().await });
        tasks.spawn("panics", async { panic!("boom") });
        let mut exits = tasks.shutdown(Duration::from_secs(5)).await;
        exits.sort_by(|a, b| a.task().cmp(b.task()));
        assert_eq!(
            exits,
            vec![
                Exit::Panicked {
                    task: "panics".into(),
                    message: "boom".into()
                },
                Exit::Finished {
                    task: "waits".into()
                },
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_token_is_aborted_after_the_grace_time() {
        let parent = CancellationToken::new();
        let mut tasks = Tasks::new(&parent);
        tasks.spawn("stubborn", std::future::pending());
        let exits = tasks.shutdown(Duration::from_millis(100)).await;
        assert_eq!(
            exits,
            vec![Exit::Aborted {
                task: "stubborn".into()
            }]
        );
    }

    #[tokio::test]
    async fn the_parent_token_stops_the_tasks() {
        let parent = CancellationToken::new();
        let mut tasks = Tasks::new(&parent);
        let t = tasks.token();
        tasks.spawn("waits", async move { t.cancelled().await });
        parent.cancel();
        assert_eq!(
            tasks.next_exit().await,
            Some(Exit::Finished {
                task: "waits".into()
            })
        );
    }
}
