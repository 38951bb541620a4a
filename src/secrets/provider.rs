//! The seams the rotation engine reads through: a [`SecretProvider`] fetches the credential,
//! an [`EventSource`] says when it may have changed. The file implementations live here; AWS
//! and Vault plug into the same traits.

use super::Credentials;
use super::file::{FileSourceError, read_credentials};
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why fetching failed: the source could not be read for now, it refuses us, or what it holds
/// is not a credential.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Network, throttling, a file missing mid-swap: retried with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// Access denied, no such secret, a key that does not decrypt: retrying soon will not
    /// help. Counted as failed and logged as an error; the next event or refresh tries again.
    #[error("{0}")]
    Refused(String),
    /// The source answered with something that is not a credential.
    #[error("{0}")]
    Invalid(String),
}

impl SourceError {
    /// Worth retrying with backoff (network, missing file during a swap, throttling).
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::Unavailable(_))
    }
}

/// What an [`EventSource`] tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The `source` label of `rotagate_events_total` ("file", "sqs").
    pub origin: &'static str,
    pub change: Change,
    /// The version the event names, when it names one.
    pub version: Option<String>,
    /// The source counted this event in `rotagate_events_total` itself (it knows why it
    /// ignored one); otherwise the engine counts it by the attempt's outcome.
    pub counted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The current version may have moved: fetch, validate, swap.
    Current,
    /// A version was staged to become current: fetch it ahead, do not swap.
    Pending,
    /// Not a secret change: an RDS failover of the database's cluster or instance (look for
    /// the writer now).
    Failover,
}

/// Which version a fetch asks for. After an upstream login is refused, the engine asks for the
/// current one first, then the pending one (sources without stages treat both alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Current,
    Pending,
}

/// Where the password of each login comes from when it changes by itself, more often than
/// the credential (RDS IAM tokens): a fresh password is asked for at every login.
pub trait LoginToken: Send + Sync {
    /// The password for a login to `endpoint` (`host:port`) starting now.
    fn password<'a>(
        &'a self,
        endpoint: &'a str,
    ) -> BoxFuture<'a, Result<super::SecretString, SourceError>>;
    /// When the password in use was made and until when it is valid; never the password.
    fn status(&self) -> Option<TokenStatus>;
}

/// What `/status` may show of a [`LoginToken`].
#[derive(Debug, Clone, Copy)]
pub struct TokenStatus {
    pub signed_at: std::time::SystemTime,
    pub valid_until: std::time::SystemTime,
}

pub trait SecretProvider: Send + Sync {
    /// Short name for logs, metrics and /status ("file", "aws", "vault").
    fn kind(&self) -> &'static str;
    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>>;

    /// The current version id when the source can tell it more cheaply than a fetch (AWS:
    /// DescribeSecret). `None`: it cannot, fetch instead. The periodic check uses this.
    fn current_version(&self) -> BoxFuture<'_, Result<Option<String>, SourceError>> {
        Box::pin(async { Ok(None) })
    }

    /// The generation serving `version` has drained: release what backs it (Vault: revoke
    /// the lease). Most sources hold nothing.
    fn retire(&self, _version: &str) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Something that says "look again": a file watcher, an SQS listener, a lease timer.
pub trait EventSource: Send + Sync {
    /// Runs until `stop`, sending a note on `tx` whenever the secret may have changed.
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Note>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

pub struct FileProvider {
    pub path: PathBuf,
}

impl SecretProvider for FileProvider {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn fetch(&self, _stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(async move {
            let path = self.path.clone();
            let read = tokio::task::spawn_blocking(move || read_credentials(&path))
                .await
                .map_err(|e| SourceError::Unavailable(format!("reading the secret file: {e}")))?;
            read.map_err(|e| match e {
                FileSourceError::Read { .. } => SourceError::Unavailable(e.to_string()),
                FileSourceError::Invalid { .. } => SourceError::Invalid(e.to_string()),
            })
        })
    }
}

/// Watches a file by polling its metadata (inode, size, mtime): an atomic rename, an in-place
/// write and a Kubernetes secret's symlink swap all change it, and polling needs no inotify
/// limit. The interval is short; each poll is one `stat`.
pub struct FileWatcher {
    pub path: PathBuf,
    pub interval: Duration,
}

type Stamp = Option<(u64, u64, SystemTime)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

impl EventSource for FileWatcher {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Note>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut last = stamp(&self.path);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(self.interval) => {}
                }
                let now = stamp(&self.path);
                if now != last {
                    last = now;
                    let note = Note {
                        origin: "file",
                        change: Change::Current,
                        version: None,
                        counted: false,
                    };
                    if tx.send(note).await.is_err() {
                        return;
                    }
                }
            }
        })
    }
}
