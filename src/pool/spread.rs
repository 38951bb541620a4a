//! A reader entry's hosts (design 9.3): each generation has one [`Generation`] per configured
//! host, and every acquire picks one of the hosts in rotation at random. Which hosts are in
//! rotation is decided outside the pool (the reader check, `rotation/readers.rs`) and set here
//! as a bit mask over the configured hosts; a client queued on a host that leaves the rotation
//! is woken and picks again.
//!
//! A writer entry has one host per generation and no [`Spread`].

use super::generation::Generation;
use crate::config::HostPort;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// At most this many hosts in a reader entry (the mask's bits).
pub const MAX_HOSTS: usize = 64;

/// One worker's objects of one generation: one per host (a writer entry: one).
pub struct Set {
    pub gens: Vec<Arc<Generation>>,
}

impl Set {
    /// The first host's (a writer entry's only one).
    pub fn first(&self) -> &Arc<Generation> {
        &self.gens[0]
    }
}

/// The hosts in rotation and how acquires are spread over them.
pub struct Spread {
    hosts: Vec<HostPort>,
    /// Bit `i` set: `hosts[i]` takes transactions.
    mask: AtomicU64,
    /// Feeds the pick (a counter through splitmix64: cheap, lock-free and evenly spread).
    draws: AtomicU64,
    /// Hosts taken out for refusing a credential being validated, and that credential's
    /// generation: kept out until a check made with that generation (or a later one) says.
    held: std::sync::Mutex<(u64, u64)>,
    /// Told when the mask changes.
    pub changed: Notify,
    /// `rotagate_host_transactions_total{host}`: acquires per host.
    acquired: Vec<metrics::Counter>,
}

impl Spread {
    /// No host is in rotation until the first check says which are.
    pub fn new(database: &str, hosts: Vec<HostPort>) -> Self {
        assert!(hosts.len() <= MAX_HOSTS, "at most {MAX_HOSTS} hosts");
        let acquired = hosts
            .iter()
            .map(|h| {
                metrics::counter!("rotagate_host_transactions_total", "database" => database.to_owned(), "host" => h.to_string())
            })
            .collect();
        Self {
            hosts,
            mask: AtomicU64::new(0),
            draws: AtomicU64::new(seed()),
            held: std::sync::Mutex::new((0, 0)),
            changed: Notify::new(),
            acquired,
        }
    }

    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// Puts exactly the hosts in `on` in rotation, as a check made with generation `checked`
    /// found them; true when that changed anything. A host held out for refusing a newer
    /// generation's credential stays out.
    pub fn set(&self, on: &[bool], checked: u64) -> bool {
        let mask = on
            .iter()
            .enumerate()
            .filter(|(_, on)| **on)
            .fold(0u64, |m, (i, _)| m | (1 << i));
        let held = {
            let mut held = self.held.lock().expect("held lock");
            if checked >= held.1 {
                *held = (0, 0);
            }
            held.0
        };
        let mask = mask & !held;
        let old = self.mask.swap(mask, Ordering::AcqRel);
        if old != mask {
            self.changed.notify_waiters();
        }
        old != mask
    }

    /// Takes `host` out of rotation: it refused the credential validated for `generation`,
    /// which is about to be published. True when it was in.
    pub fn take_out(&self, host: &HostPort, generation: u64) -> bool {
        let Some(i) = self.hosts.iter().position(|h| h == host) else {
            return false;
        };
        {
            let mut held = self.held.lock().expect("held lock");
            *held = (held.0 | (1 << i), generation.max(held.1));
        }
        let old = self.mask.fetch_and(!(1 << i), Ordering::AcqRel);
        let was = old & (1 << i) != 0;
        if was {
            self.changed.notify_waiters();
        }
        was
    }

    /// Whether `hosts[i]` is in rotation.
    pub fn is_in(&self, i: usize) -> bool {
        self.mask.load(Ordering::Acquire) & (1 << i) != 0
    }

    /// The hosts in rotation now.
    pub fn in_rotation(&self) -> Vec<HostPort> {
        (0..self.hosts.len())
            .filter(|i| self.is_in(*i))
            .map(|i| self.hosts[i].clone())
            .collect()
    }

    /// A host in rotation, at random; None when none is.
    pub fn pick(&self) -> Option<usize> {
        let mask = self.mask.load(Ordering::Acquire);
        let n = mask.count_ones() as u64;
        if n == 0 {
            return None;
        }
        let draw = splitmix64(self.draws.fetch_add(1, Ordering::Relaxed)) % n;
        Some(nth_set_bit(mask, draw as u32))
    }

    /// Counts a connection handed out on `hosts[i]`.
    pub fn count(&self, i: usize) {
        self.acquired[i].increment(1);
    }
}

/// Resolves when the rotation changes (never for a writer entry). Registered when created.
pub(super) fn changed(spread: Option<&Spread>) -> impl std::future::Future<Output = ()> + '_ {
    let notified = spread.map(|s| {
        let mut n = Box::pin(s.changed.notified());
        n.as_mut().enable();
        n
    });
    async move {
        match notified {
            Some(n) => n.await,
            None => std::future::pending().await,
        }
    }
}

/// Why a reader entry's client waited in vain: no host was in rotation.
pub(super) fn none_in_rotation() -> super::LastError {
    (
        "no_host_in_rotation",
        "no upstream host is in rotation (none answers as target_session_attrs wants, within \
         max_replica_lag)"
            .to_owned(),
    )
}

/// The index of the `n`th (from 0) set bit of `mask`, which has more than `n`.
fn nth_set_bit(mut mask: u64, n: u32) -> usize {
    for _ in 0..n {
        mask &= mask - 1;
    }
    mask.trailing_zeros() as usize
}

/// splitmix64's output function: consecutive inputs give independent-looking outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A different sequence per process.
fn seed() -> u64 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<HostPort> {
        (0..n)
            .map(|i| HostPort::parse(&format!("h{i}:5432")).unwrap())
            .collect()
    }

    #[test]
    fn picks_only_hosts_in_rotation_and_spreads_evenly() {
        let s = Spread::new("db", hosts(3));
        assert_eq!(s.pick(), None);
        assert!(s.set(&[true, false, true], 1));
        assert!(!s.set(&[true, false, true], 1));
        let mut seen = [0u32; 3];
        for _ in 0..10_000 {
            seen[s.pick().unwrap()] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 4_500 && seen[2] > 4_500, "{seen:?}");
        assert!(s.take_out(&hosts(3)[0], 2));
        assert!(!s.take_out(&hosts(3)[0], 2));
        assert_eq!(s.in_rotation(), vec![hosts(3)[2].clone()]);
        assert_eq!(s.pick(), Some(2));
        // A check made with the old credential does not bring it back; one with the new does.
        s.set(&[true, false, true], 1);
        assert_eq!(s.in_rotation(), vec![hosts(3)[2].clone()]);
        s.set(&[true, false, true], 2);
        assert_eq!(s.in_rotation().len(), 2);
    }

    #[test]
    fn the_nth_set_bit_is_found() {
        assert_eq!(nth_set_bit(0b1011_0000, 0), 4);
        assert_eq!(nth_set_bit(0b1011_0000, 1), 5);
        assert_eq!(nth_set_bit(0b1011_0000, 2), 7);
        assert_eq!(nth_set_bit(1 << 63, 0), 63);
    }
}
