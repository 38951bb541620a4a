//! Cancel routing. Each client gets rotagate's own BackendKeyData; the registry maps it to the
//! upstream connection the client is using at that moment (none while it is between
//! transactions, and then a CancelRequest is dropped, as it would have nothing to cancel).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where a client's CancelRequest goes right now: an upstream (pid, secret key), or nowhere.
/// Set twice per transaction, so it is one atomic word: pid in the high half (0 = none; no
/// PostgreSQL backend has pid 0), key in the low half.
#[derive(Debug, Default)]
pub struct CancelSlot(AtomicU64);

impl CancelSlot {
    pub fn set(&self, target: Option<(i32, i32)>) {
        let word = target.map_or(0, |(pid, key)| {
            (u64::from(pid as u32) << 32) | u64::from(key as u32)
        });
        self.0.store(word, Ordering::Release);
    }

    pub fn get(&self) -> Option<(i32, i32)> {
        let word = self.0.load(Ordering::Acquire);
        (word >> 32 != 0).then_some(((word >> 32) as u32 as i32, word as u32 as i32))
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

    /// The upstream target for a client's (pid, key), if the client is attached to one.
    pub fn lookup(&self, pid: i32, key: i32) -> Option<(i32, i32)> {
        self.map
            .lock()
            .expect("cancel map lock")
            .get(&(pid, key))
            .and_then(|s| s.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_while_attached_and_forgets_on_drop() {
        let reg = Arc::new(CancelRegistry::default());
        let k = reg.register(Some(42));
        assert_eq!(k.pid, 42);
        assert_eq!(reg.lookup(42, k.key), None);
        k.slot.set(Some((7, -8)));
        assert_eq!(reg.lookup(42, k.key), Some((7, -8)));
        k.slot.set(None);
        assert_eq!(reg.lookup(42, k.key), None);
        k.slot.set(Some((7, 8)));
        assert_eq!(reg.lookup(42, k.key.wrapping_add(1)), None);
        let key = k.key;
        drop(k);
        assert_eq!(reg.lookup(42, key), None);
    }
}
