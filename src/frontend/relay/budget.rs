//! `listen.message_memory`: one process-wide budget for the bytes of messages rotagate holds
//! whole while it reads them to decide on them (a client's Query or Parse). Messages up to
//! [`FREE`] are held without asking, as every connection's buffers are; a larger one is read
//! only once the client's buffer has a grant for it, so eight clients each sending a 60 MiB
//! Query hold one or two of them at a time, not eight, and the others wait (their bytes stay
//! in the kernel's socket buffers and their senders block). A server error streams through
//! and needs none (see `lane::ERROR_HEAD`).
//!
//! The grant lives as long as the memory it pays for: it is given back when the buffer that
//! held the message is empty again and shrunk to its usual size.

use bytes::BytesMut;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;

/// Bytes a client's buffer may hold without a grant.
pub const FREE: usize = 1 << 20;
/// A buffer grown past this is replaced by a small one once empty.
const SHRINK_ABOVE: usize = 64 * 1024;
/// The size a buffer goes back to.
const USUAL: usize = 8 * 1024;
/// The semaphore counts KiB, so that a 1 TiB budget fits its u32 permits.
const UNIT: usize = 1024;

/// The process-wide budget: one permit per KiB.
pub fn semaphore(bytes: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new((bytes / UNIT).min(Semaphore::MAX_PERMITS)))
}

/// One client's claim on the budget.
pub struct Budget {
    sem: PollSemaphore,
    grant: Option<OwnedSemaphorePermit>,
    /// A wait is counted once, however often the relay polls while it lasts.
    waiting: bool,
}

impl Budget {
    pub fn new(sem: Arc<Semaphore>) -> Self {
        Self {
            sem: PollSemaphore::new(sem),
            grant: None,
            waiting: false,
        }
    }

    /// Ready when the client's buffer may hold `held` bytes; Pending (the task woken when
    /// other clients give memory back) while the budget has no room for them.
    #[inline]
    pub fn poll_room(&mut self, cx: &mut Context<'_>, held: usize) -> Poll<()> {
        if held <= FREE {
            return Poll::Ready(());
        }
        self.poll_grant(cx, held)
    }

    /// [`Budget::poll_room`] past `FREE`: a grant that covers `held`.
    fn poll_grant(&mut self, cx: &mut Context<'_>, held: usize) -> Poll<()> {
        let need = u32::try_from(held.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let have = self.grant.as_ref().map_or(0, |g| g.num_permits() as u32);
        if have >= need {
            return Poll::Ready(());
        }
        match self.sem.poll_acquire_many(cx, need - have) {
            Poll::Ready(Some(more)) => {
                self.waiting = false;
                metrics::gauge!("rotagate_message_memory_held_bytes")
                    .increment((more.num_permits() * UNIT) as f64);
                match self.grant.as_mut() {
                    Some(g) => g.merge(more),
                    None => self.grant = Some(more),
                }
                Poll::Ready(())
            }
            // Closed: never (the semaphore is not closed); let the read go on.
            Poll::Ready(None) => Poll::Ready(()),
            Poll::Pending => {
                if !self.waiting {
                    self.waiting = true;
                    metrics::counter!("rotagate_message_memory_waits_total").increment(1);
                }
                Poll::Pending
            }
        }
    }

    /// [`Budget::poll_room`] as a future.
    pub async fn room(&mut self, held: usize) {
        std::future::poll_fn(|cx| self.poll_room(cx, held)).await;
    }

    /// Gives `buf`'s memory back, and the grant that paid for it, once `buf` holds nothing.
    pub fn release(&mut self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
            *buf = BytesMut::with_capacity(USUAL);
            self.give_back();
        }
    }

    fn give_back(&mut self) {
        if let Some(g) = self.grant.take() {
            metrics::gauge!("rotagate_message_memory_held_bytes")
                .decrement((g.num_permits() * UNIT) as f64);
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(b: &mut Budget, held: usize) -> Poll<()> {
        b.poll_room(&mut Context::from_waker(Waker::noop()), held)
    }

    #[test]
    fn a_large_message_waits_until_another_gives_its_memory_back() {
        let sem = semaphore(8 << 20);
        let (mut a, mut b) = (Budget::new(sem.clone()), Budget::new(sem.clone()));
        assert_eq!(poll(&mut a, FREE), Poll::Ready(()), "small: no grant");
        assert_eq!(poll(&mut a, 6 << 20), Poll::Ready(()));
        assert_eq!(poll(&mut a, 6 << 20), Poll::Ready(()), "already granted");
        assert_eq!(poll(&mut b, 4 << 20), Poll::Pending, "2 MiB left");
        let mut buf = BytesMut::with_capacity(6 << 20);
        buf.extend_from_slice(b"x");
        a.release(&mut buf);
        assert_eq!(
            poll(&mut b, 4 << 20),
            Poll::Pending,
            "a's buffer still holds a byte"
        );
        buf.clear();
        a.release(&mut buf);
        assert!(buf.capacity() < SHRINK_ABOVE, "the buffer shrank");
        assert_eq!(poll(&mut b, 4 << 20), Poll::Ready(()));
        drop(b);
        assert_eq!(sem.available_permits(), (8 << 20) / UNIT, "all given back");
    }

    #[test]
    fn a_grant_grows_with_the_buffer() {
        let sem = semaphore(8 << 20);
        let mut a = Budget::new(sem.clone());
        assert_eq!(poll(&mut a, 2 << 20), Poll::Ready(()));
        assert_eq!(poll(&mut a, 5 << 20), Poll::Ready(()));
        assert_eq!(sem.available_permits(), (3 << 20) / UNIT);
        assert_eq!(
            poll(&mut a, 9 << 20),
            Poll::Pending,
            "more than the whole budget"
        );
    }
}
