//! Credential rotation: the only writer of pool generations. Triggers (a source's change
//! events, the periodic check, `POST /rotate`, a refused upstream login, the breaker's
//! half-open moment) become attempts: fetch -> parse and validate -> health-check -> publish ->
//! drain -> persist -> audit. The breaker (and the sources' backoff) are pure state machines.

mod audit;
pub mod breaker;
mod checks;
mod engine;
#[cfg(test)]
mod engine_fakes;
#[cfg(test)]
mod engine_tests;
mod failover;
#[cfg(test)]
mod failover_tests;
mod lag;
mod parity;
pub mod probes;
pub mod readers;
mod status;
mod upstream;
pub mod writer;

pub use engine::{Engine, EngineParts};
pub use readers::Readers;
pub use status::{Outcome, Report, RotationStatus, Trigger};
pub use upstream::Upstream;

use tokio::sync::{mpsc, oneshot};

/// A request to the engine, with somewhere to send the result when the caller waits for it.
pub struct Request {
    pub trigger: Trigger,
    pub reply: Option<oneshot::Sender<Report>>,
}

/// What the admin listener holds to ask for a rotation.
#[derive(Clone)]
pub struct RotationHandle {
    tx: mpsc::Sender<Request>,
}

impl RotationHandle {
    pub fn new(tx: mpsc::Sender<Request>) -> Self {
        Self { tx }
    }

    /// Runs one attempt now and returns its report (None when the engine has stopped).
    pub async fn rotate_now(&self) -> Option<Report> {
        self.request(Trigger::Manual).await
    }

    /// Looks for the host to serve from now (`POST /failover`) and returns what was found.
    pub async fn failover_now(&self) -> Option<Report> {
        self.request(Trigger::Failover).await
    }

    /// Republishes the serving credential with the pool settings now configured.
    pub async fn reload_pool(&self) -> Option<Report> {
        self.request(Trigger::Reload).await
    }

    async fn request(&self, trigger: Trigger) -> Option<Report> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                trigger,
                reply: Some(reply),
            })
            .await
            .ok()?;
        rx.await.ok()
    }
}
