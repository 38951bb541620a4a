//! A client's named prepared statements in transaction mode. Each client has its own names;
//! each name maps to a [`Statement`] whose upstream name is rotagate's (`rotagate_` and a digest
//! of the query text and parameter types), so identical statements from many clients share one
//! upstream statement. The text is kept so that any upstream connection, of any credential
//! generation, can be prepared on demand. What a client may keep is bounded in bytes.

use super::classify::Class;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Upstream statement names start with this; client names that do too are never forwarded.
pub const UPSTREAM_PREFIX: &str = "rotagate_";

/// Per statement on top of its name and text: the map entry, the Arc and the upstream name.
const OVERHEAD: usize = 128;

#[derive(Debug)]
pub struct Statement {
    /// rotagate's name for it on every upstream connection.
    pub upstream: Arc<str>,
    /// The Parse body after the name: query text, NUL, parameter type count and OIDs.
    pub tail: Bytes,
    /// What executing it does to the session.
    pub class: Class,
}

impl Statement {
    pub fn new(tail: Bytes, class: Class) -> Self {
        Self {
            upstream: upstream_name(&tail),
            tail,
            class,
        }
    }

    fn cost(&self, name: &[u8]) -> usize {
        name.len() + self.tail.len() + OVERHEAD
    }
}

/// `rotagate_` and the first 128 bits of SHA-256 over the Parse body after the name, in hex: the
/// same for the same text and parameter types, whoever prepares it.
pub fn upstream_name(tail: &[u8]) -> Arc<str> {
    let digest = ring::digest::digest(&ring::digest::SHA256, tail);
    let mut name = String::with_capacity(UPSTREAM_PREFIX.len() + 32);
    name.push_str(UPSTREAM_PREFIX);
    for b in &digest.as_ref()[..16] {
        name.push_str(&format!("{b:02x}"));
    }
    name.into()
}

/// The statement bytes a client tried to keep beyond its bound.
#[derive(Debug)]
pub struct OverLimit {
    pub limit: usize,
}

/// One client's names.
#[derive(Debug, Default)]
pub struct Statements {
    names: HashMap<Box<[u8]>, Arc<Statement>>,
    bytes: usize,
}

impl Statements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Bytes kept now (for the bound and for tests).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `name` (not present) unless that takes the client past `limit` bytes.
    pub fn insert(
        &mut self,
        name: &[u8],
        stmt: Arc<Statement>,
        limit: usize,
    ) -> Result<(), OverLimit> {
        let cost = stmt.cost(name);
        if self.bytes + cost > limit {
            return Err(OverLimit { limit });
        }
        self.bytes += cost;
        if let Some(old) = self.names.insert(name.into(), stmt) {
            self.bytes -= old.cost(name);
        }
        Ok(())
    }

    /// Puts back what [`Statements::remove`] took (an undone Close), whatever the bound.
    pub fn restore(&mut self, name: &[u8], stmt: Arc<Statement>) {
        self.bytes += stmt.cost(name);
        if let Some(old) = self.names.insert(name.into(), stmt) {
            self.bytes -= old.cost(name);
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let stmt = self.names.remove(name)?;
        self.bytes -= stmt.cost(name);
        Some(stmt)
    }

    /// Takes every name (DEALLOCATE ALL, DISCARD ALL); [`Statements::restore_all`] undoes it.
    pub fn take_all(&mut self) -> Statements {
        std::mem::take(self)
    }

    pub fn restore_all(&mut self, taken: Statements) {
        for (name, stmt) in taken.names {
            self.restore(&name, stmt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(sql: &str) -> Arc<Statement> {
        let mut tail = sql.as_bytes().to_vec();
        tail.extend_from_slice(b"\0\0\0");
        Arc::new(Statement::new(tail.into(), Class::default()))
    }

    #[test]
    fn same_text_same_upstream_name() {
        let (a, b, c) = (stmt("SELECT 1"), stmt("SELECT 1"), stmt("SELECT 2"));
        assert_eq!(a.upstream, b.upstream);
        assert_ne!(a.upstream, c.upstream);
        assert!(a.upstream.starts_with(UPSTREAM_PREFIX));
        assert_eq!(a.upstream.len(), UPSTREAM_PREFIX.len() + 32);
    }

    #[test]
    fn names_are_bounded_in_bytes_and_undo_restores() {
        let mut s = Statements::default();
        let one = stmt("SELECT 1");
        let cost = one.cost(b"s1");
        s.insert(b"s1", one, cost).unwrap();
        assert!(s.insert(b"s2", stmt("SELECT 2"), cost).is_err());
        let gone = s.remove(b"s1").unwrap();
        assert_eq!(s.bytes(), 0);
        s.restore(b"s1", gone);
        assert_eq!(s.bytes(), cost);
        let all = s.take_all();
        assert!(s.is_empty() && s.bytes() == 0);
        s.restore_all(all);
        assert!(s.contains(b"s1"));
    }
}
