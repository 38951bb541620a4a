//! The client half of a relay: its stream, the bytes it sent that are not forwarded yet, and
//! both directions' lanes. What a session keeps about the client's protocol state belongs to its
//! mode, not here.

use super::lane::Lane;
use crate::frontend::stream::ClientStream;
use bytes::BytesMut;
use futures::task::AtomicWaker;
use std::sync::Arc;

pub struct ClientSide {
    pub stream: ClientStream,
    pub buf: BytesMut,
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
}

impl ClientSide {
    pub fn new(stream: ClientStream, buf: BytesMut, worker: usize) -> Self {
        Self {
            stream,
            buf,
            up: Lane::default(),
            down: Lane::default(),
            scratch: BytesMut::new(),
            worker,
            waker: Arc::new(AtomicWaker::new()),
        }
    }
}
