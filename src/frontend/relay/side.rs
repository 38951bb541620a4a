//! The client half of a relay: its stream, the bytes it sent that are not forwarded yet, and
//! both directions' lanes. What a session keeps about the client's protocol state belongs to its
//! mode, not here.

use super::budget::Budget;
use super::lane::Lane;
use crate::frontend::stream::ClientStream;
use crate::pool::Generation;
use bytes::BytesMut;
use futures::task::AtomicWaker;
use std::sync::Arc;

pub struct ClientSide {
    pub stream: ClientStream,
    pub buf: BytesMut,
    /// `buf`'s share of `listen.message_memory` while it holds a large message.
    pub budget: Budget,
    /// Client bytes on their way upstream (from `buf`).
    pub up: Lane,
    /// Server bytes and rotagate's replies on their way to the client (from the server's
    /// read buffer).
    pub down: Lane,
    /// Where decisions write the bytes they send.
    pub scratch: BytesMut,
    /// The worker (event loop) this client lives on: its share of the pools is used.
    pub worker: usize,
    /// Woken when the generation of the connection being relayed expires.
    pub waker: Arc<AtomicWaker>,
    /// The generation `waker` is registered with: kept from one transaction to the next, since
    /// most go to the same generation (a lock and a list scan fewer per transaction), and
    /// dropped with the client.
    watching: Option<Arc<Generation>>,
}

impl ClientSide {
    pub fn new(stream: ClientStream, buf: BytesMut, worker: usize, budget: Budget) -> Self {
        Self {
            stream,
            buf,
            budget,
            up: Lane::default(),
            down: Lane::default(),
            scratch: BytesMut::new(),
            worker,
            waker: Arc::new(AtomicWaker::new()),
            watching: None,
        }
    }

    /// Has `home`'s expiry wake this client's relay (and no longer another generation's). A
    /// wake while no relay runs is a spurious wake-up of the session's task, harmless.
    pub fn watch(&mut self, home: &Arc<Generation>) {
        if self.watching.as_ref().is_some_and(|g| Arc::ptr_eq(g, home)) {
            return;
        }
        if let Some(old) = self.watching.take() {
            old.unwatch(&self.waker);
        }
        home.watch(&self.waker);
        self.watching = Some(home.clone());
    }
}

impl Drop for ClientSide {
    fn drop(&mut self) {
        if let Some(g) = self.watching.take() {
            g.unwatch(&self.waker);
        }
    }
}
