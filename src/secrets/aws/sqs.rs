//! The SQS listener: an [`EventSource`] that long-polls a queue fed by EventBridge (directly or
//! through SNS), turns each message into a note for the engine, and deletes it once handled.
//!
//! Every message is deleted after it is read, whatever it held: applied, ignored (another
//! secret, a repeat, a change that does not move AWSCURRENT) or invalid (not an event). None is
//! retried, so no poison message can loop. A message is deleted only after its note reached the
//! engine; if rotagate dies in between, SQS delivers it again and the engine, idempotent on
//! version id, does nothing twice. Receive errors back off from 2 s to 60 s.

use super::SecretMatcher;
use super::events::{EventAction, classify};
use crate::secrets::backoff::Backoff;
use crate::secrets::provider::{Change, EventSource, Note};
use aws_config::SdkConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName, QueueAttributeName,
};
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Long-poll wait: SQS's maximum, so an idle queue costs three requests a minute.
const WAIT_SECONDS: i32 = 20;
/// A message seen this often has been in flight when rotagate stopped, again and again:
/// deleted unread rather than given another chance to do that.
const MAX_RECEIVES: u32 = 5;
/// How many (change, version) pairs are remembered to drop repeated events.
const REMEMBERED: usize = 64;

pub struct SqsListener {
    client: Client,
    queue_url: String,
    matcher: SecretMatcher,
    recent: VecDeque<(Change, String)>,
}

impl SqsListener {
    pub fn new(sdk: &SdkConfig, queue_url: String, matcher: SecretMatcher) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(WAIT_SECONDS as u64 + 10))
            .build();
        let conf = aws_sdk_sqs::config::Builder::from(sdk)
            .timeout_config(timeouts)
            .build();
        Self {
            client: Client::from_conf(conf),
            queue_url,
            matcher,
            recent: VecDeque::new(),
        }
    }

    async fn listen(mut self, tx: mpsc::Sender<Note>, stop: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut failing = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.check_queue() => {}
        }
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.receive() => r,
            };
            let messages = match received {
                Ok(messages) => messages,
                Err(e) => {
                    let delay = backoff.next_delay();
                    failing = true;
                    tracing::warn!(queue = %self.queue_url, error = %e, retry_in = ?delay,
                        "cannot receive from the SQS queue; retrying with backoff (the periodic check still runs)");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            if std::mem::take(&mut failing) {
                tracing::info!(queue = %self.queue_url, "the SQS queue answers again");
            }
            backoff.reset();
            let mut handled = Vec::with_capacity(messages.len());
            for m in messages {
                if let Some(note) = self.read(&m) {
                    if tx.send(note).await.is_err() {
                        return;
                    }
                }
                handled.extend(m.receipt_handle);
            }
            self.delete(handled).await;
        }
    }

    /// Names the queue in the log (by ARN, as IAM and the rule's target know it), or says at
    /// once why it cannot be read; either way the receive loop starts.
    async fn check_queue(&self) {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await;
        match out {
            Ok(out) => {
                let arn = out
                    .attributes()
                    .and_then(|a| a.get(&QueueAttributeName::QueueArn))
                    .map_or("?", String::as_str);
                tracing::info!(queue = %self.queue_url, queue_arn = arn, "listening for secret change events on SQS");
            }
            Err(e) => {
                tracing::warn!(queue = %self.queue_url, error = %DisplayErrorContext(e), "cannot read the SQS queue's attributes; listening anyway, retrying with backoff")
            }
        }
    }

    async fn receive(&self) -> Result<Vec<Message>, String> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .wait_time_seconds(WAIT_SECONDS)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| DisplayErrorContext(e).to_string())?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Classifies one message, counts it, and says what the engine should hear of it.
    fn read(&mut self, m: &Message) -> Option<Note> {
        let id = m.message_id().unwrap_or("?");
        let action = match receive_count(m) {
            n if n > MAX_RECEIVES => EventAction::Invalid(format!("delivered {n} times")),
            _ => classify(m.body().unwrap_or(""), &self.matcher),
        };
        let action = self.drop_repeat(action);
        metrics::counter!("rotagate_events_total", "source" => "sqs", "outcome" => action.label())
            .increment(1);
        let (change, version) = match action {
            EventAction::Rotate { version } => (Change::Current, version),
            EventAction::Prefetch { version } => (Change::Pending, version),
            EventAction::Ignore(why) => {
                tracing::debug!(message_id = id, reason = %why, "SQS event ignored");
                return None;
            }
            EventAction::Invalid(why) => {
                tracing::warn!(message_id = id, reason = %why, "SQS message is not an event rotagate reads; deleted");
                return None;
            }
        };
        tracing::info!(
            message_id = id,
            ?change,
            version = version.as_deref().unwrap_or(""),
            "secret change event"
        );
        Some(Note {
            origin: "sqs",
            change,
            version,
            counted: true,
        })
    }

    /// Events repeat (at-least-once delivery, a rule and a topic both routed to the queue):
    /// a (change, version) pair already passed on is ignored.
    fn drop_repeat(&mut self, action: EventAction) -> EventAction {
        let key = match &action {
            EventAction::Rotate { version: Some(v) } => (Change::Current, v.clone()),
            EventAction::Prefetch { version: Some(v) } => (Change::Pending, v.clone()),
            _ => return action,
        };
        if self.recent.contains(&key) {
            return EventAction::Ignore(format!("a repeat of the event for version {}", key.1));
        }
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(key);
        action
    }

    async fn delete(&self, handles: Vec<String>) {
        if handles.is_empty() {
            return;
        }
        let entries: Vec<_> = handles
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .ok()
            })
            .collect();
        let count = entries.len();
        let failed = match self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => out.failed.len(),
            Err(e) => {
                tracing::warn!(queue = %self.queue_url, error = %DisplayErrorContext(e), "cannot delete handled SQS messages");
                count
            }
        };
        if failed > 0 {
            tracing::warn!(queue = %self.queue_url, failed, "handled SQS messages not deleted; they return after the visibility timeout and are handled again (idempotent)");
        }
    }
}

fn receive_count(m: &Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

impl EventSource for SqsListener {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Note>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin((*self).listen(tx, stop))
    }
}
