//! The SQS listener: long-polls a queue fed by EventBridge (directly or through SNS), turns
//! each message into a note for the engine of every database whose secret it names, and
//! deletes it once handled. One queue may carry events for many secrets: each database
//! subscribes ([`Queues::subscribe`], an [`EventSource`]) and one listener per queue runs while
//! any database listens. An event that names no served secret is logged and deleted.
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
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
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

/// The queues being listened to, by URL; shared by every database's start.
#[derive(Default)]
pub struct Queues {
    running: Mutex<HashMap<String, Arc<Subscribers>>>,
}

/// The databases listening on one queue.
#[derive(Default)]
struct Subscribers {
    list: Mutex<Vec<Subscriber>>,
    /// Stops the queue's listener when the last database leaves.
    stop: CancellationToken,
}

struct Subscriber {
    id: u64,
    database: String,
    matcher: SecretMatcher,
    tx: mpsc::Sender<Note>,
}

impl Queues {
    /// Database `database`'s events on `queue_url` (for the secret `matcher` names): an
    /// [`EventSource`] that joins the queue's listener when it runs.
    pub fn subscribe(
        self: &Arc<Self>,
        sdk: &SdkConfig,
        queue_url: String,
        database: String,
        matcher: SecretMatcher,
    ) -> Subscription {
        Subscription {
            queues: self.clone(),
            sdk: sdk.clone(),
            queue_url,
            database,
            matcher,
        }
    }

    /// Adds a subscriber, starting the queue's listener for the first one.
    fn join(&self, sub: &Subscription, tx: mpsc::Sender<Note>) -> (Arc<Subscribers>, u64) {
        let mut running = self.running.lock().expect("queues lock");
        let subs = running.entry(sub.queue_url.clone()).or_insert_with(|| {
            let subs = Arc::new(Subscribers::default());
            let listener = SqsListener::new(&sub.sdk, sub.queue_url.clone(), subs.clone());
            tokio::spawn(listener.listen(subs.stop.clone()));
            subs
        });
        let id = rand::random();
        subs.list
            .lock()
            .expect("subscribers lock")
            .push(Subscriber {
                id,
                database: sub.database.clone(),
                matcher: sub.matcher.clone(),
                tx,
            });
        (subs.clone(), id)
    }

    /// Removes a subscriber, stopping the queue's listener after the last one.
    fn leave(&self, queue_url: &str, subs: &Subscribers, id: u64) {
        let mut running = self.running.lock().expect("queues lock");
        let mut list = subs.list.lock().expect("subscribers lock");
        list.retain(|s| s.id != id);
        if list.is_empty() {
            subs.stop.cancel();
            running.remove(queue_url);
        }
    }
}

/// One database listening on a queue, until its engine stops.
pub struct Subscription {
    queues: Arc<Queues>,
    sdk: SdkConfig,
    queue_url: String,
    database: String,
    matcher: SecretMatcher,
}

impl EventSource for Subscription {
    fn run(
        self: Box<Self>,
        tx: mpsc::Sender<Note>,
        stop: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (subs, id) = self.queues.join(&self, tx);
            stop.cancelled().await;
            self.queues.leave(&self.queue_url, &subs, id);
        })
    }
}

struct SqsListener {
    client: Client,
    queue_url: String,
    subs: Arc<Subscribers>,
    recent: VecDeque<(Change, String)>,
}

impl SqsListener {
    fn new(sdk: &SdkConfig, queue_url: String, subs: Arc<Subscribers>) -> Self {
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
            subs,
            recent: VecDeque::new(),
        }
    }

    async fn listen(mut self, stop: CancellationToken) {
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
                for (tx, note) in self.read(&m) {
                    // An engine that stopped meanwhile has left (or is leaving) the queue.
                    let _ = tx.send(note).await;
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

    /// Classifies one message for every database on the queue, counts it, and says which
    /// engines should hear of it.
    fn read(&mut self, m: &Message) -> Vec<(mpsc::Sender<Note>, Note)> {
        let id = m.message_id().unwrap_or("?");
        let body = m.body().unwrap_or("");
        let routed: Vec<(mpsc::Sender<Note>, String, EventAction)> = {
            let subs = self.subs.list.lock().expect("subscribers lock");
            let mut out = Vec::new();
            let mut unrouted = None;
            for s in subs.iter() {
                let action = match receive_count(m) {
                    n if n > MAX_RECEIVES => EventAction::Invalid(format!("delivered {n} times")),
                    _ => classify(body, &s.matcher),
                };
                match action {
                    EventAction::Rotate { .. }
                    | EventAction::Prefetch { .. }
                    | EventAction::Failover { .. } => {
                        out.push((s.tx.clone(), s.database.clone(), action))
                    }
                    other => unrouted = unrouted.or(Some(other)),
                }
            }
            if out.is_empty() {
                let action = unrouted.unwrap_or(EventAction::Ignore("no database listens".into()));
                return self.drop_unrouted(id, action);
            }
            out
        };
        let mut notes = Vec::new();
        for (tx, database, action) in routed {
            let action = self.drop_repeat(&database, action);
            metrics::counter!("rotagate_events_total", "source" => "sqs", "outcome" => action.label(), "database" => database.clone())
                .increment(1);
            let (change, version) = match action {
                EventAction::Rotate { version } => (Change::Current, version),
                EventAction::Prefetch { version } => (Change::Pending, version),
                EventAction::Failover { event } => (Change::Failover, Some(event)),
                EventAction::Ignore(why) | EventAction::Invalid(why) => {
                    tracing::debug!(message_id = id, database = %database, reason = %why, "SQS event ignored");
                    continue;
                }
            };
            match change {
                Change::Failover => {
                    tracing::info!(message_id = id, database = %database, event = version.as_deref().unwrap_or(""), "RDS failover event")
                }
                _ => {
                    tracing::info!(message_id = id, database = %database, ?change, version = version.as_deref().unwrap_or(""), "secret change event")
                }
            }
            let note = Note {
                origin: "sqs",
                change,
                version,
                counted: true,
            };
            notes.push((tx, note));
        }
        notes
    }

    /// A message no database takes: counted (without a database) and logged.
    fn drop_unrouted(&self, id: &str, action: EventAction) -> Vec<(mpsc::Sender<Note>, Note)> {
        metrics::counter!("rotagate_events_total", "source" => "sqs", "outcome" => action.label(), "database" => "")
            .increment(1);
        match action {
            EventAction::Invalid(why) => {
                tracing::warn!(message_id = id, reason = %why, "SQS message is not an event rotagate reads; deleted")
            }
            EventAction::Ignore(why) => {
                tracing::info!(message_id = id, reason = %why, "SQS event for no served database (another secret, or not a change of AWSCURRENT); deleted")
            }
            _ => {}
        }
        Vec::new()
    }

    /// Events repeat (at-least-once delivery, a rule and a topic both routed to the queue):
    /// a (change, version) pair already passed on is ignored.
    fn drop_repeat(&mut self, database: &str, action: EventAction) -> EventAction {
        let key = match &action {
            EventAction::Rotate { version: Some(v) } => {
                (Change::Current, format!("{database}/{v}"))
            }
            EventAction::Prefetch { version: Some(v) } => {
                (Change::Pending, format!("{database}/{v}"))
            }
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
