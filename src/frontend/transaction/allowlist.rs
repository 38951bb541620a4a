//! The built-in functions a plain statement may call (`allowed_functions.txt`, kept as data in
//! one file). A call of any other function, a user function that shares a name with one of
//! these in another schema, or a procedure, leads to the check on the server (see `lexed.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The list as shipped: one name per line, `#` comments.
pub const SOURCE: &str = include_str!("allowed_functions.txt");

/// The names, sorted.
pub fn names() -> &'static [&'static str] {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut v: Vec<&str> = SOURCE
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    })
}

/// Whether `name` (as PostgreSQL resolved it: folded or decoded) is on the list.
pub fn allowed(name: &[u8]) -> bool {
    names().binary_search_by(|n| n.as_bytes().cmp(name)).is_ok()
}

/// How the names of a call resolve for one client on one database.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Unqualified names reach pg_catalog first (the client's search_path does not put another
    /// schema before it).
    pub catalog_first: bool,
    /// Names of pg_catalog functions that a function in another schema shares (sorted): an
    /// unqualified call of one may reach the other (a better match for its arguments).
    pub shadowed: Arc<Vec<Box<[u8]>>>,
}

impl Names {
    /// Everything allowed resolves to pg_catalog (no client setting or function says otherwise).
    pub fn catalog() -> Self {
        Self {
            catalog_first: true,
            shadowed: Arc::default(),
        }
    }

    /// Whether an unqualified call of `name` surely reaches an allow-listed built-in.
    pub fn builtin(&self, name: &[u8]) -> bool {
        self.catalog_first
            && allowed(name)
            && self.shadowed.binary_search_by(|s| (**s).cmp(name)).is_err()
    }
}

/// The database's functions that share a name with a pg_catalog function, read on the server
/// when the database is first used, every [`Shadowed::EVERY`] after, and by every check after
/// a transaction (where DDL through rotagate is seen at once).
#[derive(Debug, Default)]
pub struct Shadowed {
    names: arc_swap::ArcSwap<Vec<Box<[u8]>>>,
    /// When they were last read, in ms since `start` (0: never).
    read_ms: AtomicU64,
    start: OnceLock<Instant>,
}

/// The query that lists them: one row, comma-separated. Only functions made after initdb
/// (OIDs from FirstNormalObjectId, 16384: an index range scan, not a pass over pg_proc's
/// thousands of built-ins); those initdb makes outside pg_catalog share no built-in's name.
pub const SHADOW_SQL: &str = "SELECT 'shadow', COALESCE(pg_catalog.string_agg(DISTINCT p.proname::pg_catalog.text, ','), ''), 'shadow' \
     FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid \
     AND p.pronamespace OPERATOR(pg_catalog.<>) 'pg_catalog'::pg_catalog.regnamespace \
     AND EXISTS (SELECT FROM pg_catalog.pg_proc c WHERE c.pronamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace \
       AND c.proname OPERATOR(pg_catalog.=) p.proname)";

impl Shadowed {
    pub const EVERY: Duration = Duration::from_secs(60);

    pub fn load(&self) -> Arc<Vec<Box<[u8]>>> {
        self.names.load_full()
    }

    fn now_ms(&self) -> u64 {
        let start = self.start.get_or_init(Instant::now);
        1 + start.elapsed().as_millis() as u64
    }

    /// True for the one caller that should read them now (never read, or read too long ago).
    pub fn claim(&self) -> bool {
        let now = self.now_ms();
        let last = self.read_ms.load(Ordering::Acquire);
        let due = last == 0 || now.saturating_sub(last) >= Self::EVERY.as_millis() as u64;
        due && self
            .read_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A read failed: the next caller tries again.
    pub fn retry(&self) {
        self.read_ms.store(0, Ordering::Release);
    }

    /// Takes [`SHADOW_SQL`]'s value.
    pub fn set(&self, list: &str) {
        let mut v: Vec<Box<[u8]>> = list
            .split(',')
            .filter(|n| !n.is_empty())
            .map(|n| n.as_bytes().into())
            .collect();
        v.sort_unstable();
        v.dedup();
        self.read_ms.store(self.now_ms(), Ordering::Release);
        if **self.names.load() != v {
            self.names.store(Arc::new(v));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_list_reads_and_finds_names() {
        assert!(super::names().len() > 200);
        assert!(super::allowed(b"count") && super::allowed(b"jsonb_build_object"));
        assert!(!super::allowed(b"set_config") && !super::allowed(b"pg_advisory_lock"));
        assert!(!super::allowed(b"nextval") && !super::allowed(b""));
        assert!(super::names().iter().all(|n| {
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
    }

    #[test]
    fn a_shadowed_name_is_no_builtin() {
        let s = super::Shadowed::default();
        assert!(s.claim() && !s.claim(), "one reader at a time");
        s.set("upper,lower,upper");
        let names = super::Names {
            catalog_first: true,
            shadowed: s.load(),
        };
        assert!(!names.builtin(b"upper") && !names.builtin(b"lower"));
        assert!(names.builtin(b"count") && !names.builtin(b"my_func"));
        let elsewhere = super::Names {
            catalog_first: false,
            ..super::Names::catalog()
        };
        assert!(!elsewhere.builtin(b"count"));
    }
}
