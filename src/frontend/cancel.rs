//! Cancel routing. Each client gets rotagate's own BackendKeyData; the registry maps it to the
//! upstream connection the client is using at that moment (none while it is between
//! transactions, and then a CancelRequest is dropped, as it would have nothing to cancel).

use crate::backend::UpstreamTarget;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Where a client's CancelRequest goes right now: an upstream (pid, secret key), or nowhere.
/// Set twice per transaction, so it is one atomic word: pid in the high half (0 = none; no
/// PostgreSQL backend has pid 0), key in the low half.
///
/// A cancel being forwarded holds the connection it targets: [`CancelSlot::detach`] waits for
/// it, so a connection is never handed to another client while a cancel meant for this one is
/// on its way (the server would cancel the next client's query). The two sides order their
/// steps (slot cleared, then the count read; count raised, then the slot read) so that one of
/// them always sees the other.
#[derive(Default)]
pub struct CancelSlot {
    target: AtomicU64,
    in_flight: AtomicU32,
    done: Notify,
    /// The client waits for an upstream connection: a cancel ends the wait.
    waiting: AtomicBool,
    wake_waiter: Notify,
    /// The server of the connection the client uses (or used last): a cancel goes there.
    upstream: arc_swap::ArcSwapOption<UpstreamTarget>,
    /// The address of the target in `upstream` (0: none), so that the check once per
    /// transaction is one load. `upstream` holds the target, so its address is not reused
    /// while it is stored; only the client's own task aims.
    aimed: AtomicUsize,
}

impl std::fmt::Debug for CancelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelSlot")
            .field("target", &self.get())
            .finish_non_exhaustive()
    }
}

impl CancelSlot {
    /// The client's connections now log in to `target` (stored only when it changed: once
    /// per session, and after a failover).
    pub fn aim(&self, target: &Arc<UpstreamTarget>) {
        let at = Arc::as_ptr(target) as usize;
        if self.aimed.load(Ordering::Relaxed) != at {
            self.upstream.store(Some(target.clone()));
            self.aimed.store(at, Ordering::Relaxed);
        }
    }

    /// Where a cancel for this client goes.
    pub fn upstream(&self) -> Option<Arc<UpstreamTarget>> {
        self.upstream.load_full()
    }

    /// The client now uses this upstream connection.
    pub fn attach(&self, pid: i32, key: i32) {
        let word = (u64::from(pid as u32) << 32) | u64::from(key as u32);
        self.target.store(word, Ordering::SeqCst);
    }

    /// The client is done with its connection; returns once no cancel for it is on its way.
    pub async fn detach(&self) {
        if !self.release() {
            self.wait_cancels().await;
        }
    }

    /// The first half of [`CancelSlot::detach`], without a future (it runs per transaction):
    /// false when a cancel is on its way, and then [`CancelSlot::wait_cancels`] must follow.
    pub fn release(&self) -> bool {
        self.target.store(0, Ordering::SeqCst);
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Returns once no cancel for this client is on its way.
    pub async fn wait_cancels(&self) {
        loop {
            let done = self.done.notified();
            let mut done = std::pin::pin!(done);
            done.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            done.await;
        }
    }

    fn get(&self) -> Option<(i32, i32)> {
        let word = self.target.load(Ordering::SeqCst);
        (word >> 32 != 0).then_some(((word >> 32) as u32 as i32, word as u32 as i32))
    }

    /// For a CancelRequest: the upstream to cancel, reserved until [`CancelSlot::finished`].
    /// None when the client holds no connection; a client waiting for one is woken instead.
    pub fn begin(&self) -> Option<(i32, i32)> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let target = self.get();
        if target.is_none() {
            self.finished();
            if self.waiting.load(Ordering::SeqCst) {
                self.wake_waiter.notify_waiters();
            }
        }
        target
    }

    /// The cancel [`CancelSlot::begin`] reserved for has been delivered (or given up).
    pub fn finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.done.notify_waiters();
        }
    }

    /// Runs `wait` (the wait for an upstream connection) until it ends or a cancel for this
    /// client arrives (then None).
    pub async fn cancellable<T>(&self, wait: impl std::future::Future<Output = T>) -> Option<T> {
        let woken = self.wake_waiter.notified();
        let mut woken = std::pin::pin!(woken);
        woken.as_mut().enable();
        self.waiting.store(true, Ordering::SeqCst);
        let out = tokio::select! {
            biased;
            _ = woken => None,
            r = wait => Some(r),
        };
        self.waiting.store(false, Ordering::SeqCst);
        out
    }
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), Arc<CancelSlot>>>,
}

/// A client's registration; dropping it unregisters the client.
pub struct CancelKey {
    pub pid: i32,
    pub key: i32,
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry
            .map
            .lock()
            .expect("cancel map lock")
            .remove(&(self.pid, self.key));
    }
}

impl CancelRegistry {
    /// Registers a client under `pid` (the upstream pid in session mode) or a random one.
    pub fn register(self: &Arc<Self>, pid: Option<i32>) -> CancelKey {
        let mut map = self.map.lock().expect("cancel map lock");
        loop {
            let pid = pid.unwrap_or_else(|| rand::random::<i32>() & 0x7fff_ffff);
            let key = rand::random::<i32>();
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry((pid, key)) {
                let slot = Arc::new(CancelSlot::default());
                v.insert(slot.clone());
                return CancelKey {
                    pid,
                    key,
                    slot,
                    registry: self.clone(),
                };
            }
        }
    }

    /// The slot of the client a CancelRequest names, if that client is connected.
    pub fn lookup(&self, pid: i32, key: i32) -> Option<Arc<CancelSlot>> {
        self.map
            .lock()
            .expect("cancel map lock")
            .get(&(pid, key))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn routes_only_while_attached_and_forgets_on_drop() {
        let reg = Arc::new(CancelRegistry::default());
        let k = reg.register(Some(42));
        assert_eq!(k.pid, 42);
        let slot = reg.lookup(42, k.key).unwrap();
        assert_eq!(slot.begin(), None);
        k.slot.attach(7, -8);
        assert_eq!(slot.begin(), Some((7, -8)));
        slot.finished();
        k.slot.detach().await;
        assert_eq!(slot.begin(), None);
        assert!(reg.lookup(42, k.key.wrapping_add(1)).is_none());
        let key = k.key;
        drop(k);
        assert!(reg.lookup(42, key).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn detach_waits_for_a_cancel_on_its_way() {
        let slot = Arc::new(CancelSlot::default());
        slot.attach(7, 8);
        assert_eq!(slot.begin(), Some((7, 8)));
        let s2 = slot.clone();
        let detach = tokio::spawn(async move { s2.detach().await });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !detach.is_finished(),
            "released while a cancel was on its way"
        );
        slot.finished();
        detach.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_ends_a_wait_for_a_connection() {
        let slot = Arc::new(CancelSlot::default());
        let s2 = slot.clone();
        let waiter = tokio::spawn(async move {
            s2.cancellable(tokio::time::sleep(Duration::from_secs(30)))
                .await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(slot.begin(), None);
        assert_eq!(waiter.await.unwrap(), None);
        // A cancel when nobody waits is dropped, not kept for a later wait.
        assert_eq!(slot.begin(), None);
        let later = slot
            .cancellable(tokio::time::sleep(Duration::from_secs(1)))
            .await;
        assert_eq!(later, Some(()));
    }
}
