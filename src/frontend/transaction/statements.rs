//! A client's prepared statements in transaction mode. Each client has its own names; each name
//! maps to a [`Statement`]: its Parse body (query text and parameter types), what executing it
//! does to the session, and, once the server has described it, its [`Desc`]ription as it was
//! when the client prepared it. The text is kept so that any upstream connection, of any
//! credential generation, can be prepared on demand; the description tells whether a statement
//! prepared there now is the one the client prepared (a schema change in between makes it
//! another). What a client may keep is bounded in bytes.

use super::classify::Class;
use crate::backend::prepared::{DescDigest, Key};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Upstream statement names start with this; client names that do too are never forwarded.
pub const UPSTREAM_PREFIX: &str = "rotagate_";

/// Per statement on top of its name and text: the map entry, the Arc and the description.
const OVERHEAD: usize = 128;

#[derive(Debug)]
pub struct Statement {
    /// A digest of `tail`: statements with the same key prepare the same text and types.
    pub key: Key,
    /// The Parse body after the name: query text, NUL, parameter type count and OIDs.
    pub tail: Bytes,
    /// What executing it does to the session.
    pub class: Class,
    /// What the server described when the client prepared it.
    pub desc: OnceLock<Desc>,
    /// When the client prepared it ([`crate::backend::prepared::now`]): only upstream
    /// statements prepared then or later serve it.
    pub born: u64,
    /// When the client prepared it, as `pg_prepared_statements` shows it (view.rs).
    pub prepared: std::time::SystemTime,
}

impl Statement {
    pub fn new(tail: Bytes, class: Class) -> Self {
        Self {
            key: key(&tail),
            tail,
            class,
            desc: OnceLock::new(),
            born: crate::backend::prepared::now(),
            prepared: std::time::SystemTime::now(),
        }
    }

    /// A client's unnamed statement: it is never shared, so it needs no key.
    pub fn unnamed(tail: Bytes, class: Class) -> Self {
        Self {
            key: 0,
            tail,
            class,
            desc: OnceLock::new(),
            born: 0,
            prepared: std::time::UNIX_EPOCH,
        }
    }

    fn cost(&self, name: &[u8]) -> usize {
        name.len() + self.tail.len() + OVERHEAD
    }

    /// The Parse body that prepares this statement anew as the client prepared it: its text
    /// with the parameter types the server gave it then (when known), so that a type dropped
    /// since fails as it would for the client's own statement when it is bound.
    pub fn tail_as_prepared(&self, desc: Option<&Desc>) -> Bytes {
        let Some(desc) = desc else {
            return self.tail.clone();
        };
        let text_end = memchr::memchr(0, &self.tail).map_or(self.tail.len(), |i| i + 1);
        // The ParameterDescription body is the Parse's count and types, as they are.
        let params = desc.raw_params();
        let mut b = BytesMut::with_capacity(text_end + params.len());
        b.put_slice(&self.tail[..text_end]);
        b.put_slice(params);
        b.freeze()
    }
}

/// The first 128 bits of SHA-256 over a Parse body after the name.
pub fn key(tail: &[u8]) -> Key {
    let digest = ring::digest::digest(&ring::digest::SHA256, tail);
    u128::from_be_bytes(digest.as_ref()[..16].try_into().expect("16 bytes"))
}

/// What the server said a prepared statement takes and returns: its parameter types and its
/// result columns (name, type, type modifier), or no result. These are what PostgreSQL
/// compares when it revalidates a cached plan ("cached plan must not change result type").
/// Kept as the bodies the server sent, in one buffer (one allocation; a clone is a reference
/// count), with a digest of the compared fields taken in one pass; the columns are read out
/// only when two descriptions' digests differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub digest: DescDigest,
    /// The ParameterDescription body, then the RowDescription body.
    raw: Bytes,
    /// Where the RowDescription body starts; None: NoData.
    rows_at: Option<usize>,
}

/// A result column as PostgreSQL compares it: name, type, type modifier.
pub type Column = (Vec<u8>, u32, i32);

impl Desc {
    /// From a ParameterDescription body and a RowDescription body (None: NoData). None when
    /// the bodies are malformed.
    pub fn new(params: &[u8], rows: Option<&[u8]>) -> Option<Desc> {
        let n = usize::from(u16::from_be_bytes(params.get(..2)?.try_into().ok()?));
        let params = params.get(..2 + 4 * n)?;
        let mut h = Fnv::default();
        h.write(params);
        let rows_at = match rows {
            None => {
                h.write(b"n");
                None
            }
            Some(body) => {
                for_columns(body, |name, typ, typmod| {
                    h.write(name);
                    h.write(&[0]);
                    h.write(&typ.to_be_bytes());
                    h.write(&typmod.to_be_bytes());
                })?;
                Some(params.len())
            }
        };
        let mut raw = BytesMut::with_capacity(params.len() + rows.map_or(0, <[u8]>::len));
        raw.extend_from_slice(params);
        raw.extend_from_slice(rows.unwrap_or_default());
        Some(Desc {
            digest: h.0,
            raw: raw.freeze(),
            rows_at,
        })
    }

    fn raw_params(&self) -> &[u8] {
        &self.raw[..self.rows_at.unwrap_or(self.raw.len())]
    }

    /// How many parameters the statement takes.
    pub fn param_count(&self) -> usize {
        (self.raw_params().len() - 2) / 4
    }

    /// The parameters' type OIDs.
    pub fn param_types(&self) -> impl Iterator<Item = u32> + '_ {
        self.raw_params()[2..]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The statement returns no rows (NoData).
    pub fn no_data(&self) -> bool {
        self.rows_at.is_none()
    }

    /// The result columns, read out of the RowDescription (None: NoData).
    pub fn columns(&self) -> Option<Vec<Column>> {
        let body = &self.raw[self.rows_at?..];
        let mut out = Vec::new();
        for_columns(body, |name, typ, typmod| {
            out.push((name.to_vec(), typ, typmod))
        })?;
        Some(out)
    }

    /// What a Describe of the statement answered: ParameterDescription, then RowDescription
    /// or NoData.
    pub fn answer(&self, out: &mut BytesMut) {
        self.parameter_description(out);
        match self.rows_at {
            Some(at) => {
                let rows = &self.raw[at..];
                out.put_u8(b'T');
                out.put_u32(4 + rows.len() as u32);
                out.put_slice(rows);
            }
            None => {
                out.put_u8(b'n');
                out.put_u32(4);
            }
        }
    }

    /// The ParameterDescription a Describe of the statement begins with.
    pub fn parameter_description(&self, out: &mut BytesMut) {
        let params = self.raw_params();
        out.put_u8(b't');
        out.put_u32(4 + params.len() as u32);
        out.put_slice(params);
    }
}

/// Calls `f` with each column's name, type and type modifier; None when the body is malformed.
fn for_columns(body: &[u8], mut f: impl FnMut(&[u8], u32, i32)) -> Option<()> {
    let n = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let mut at = 2;
    for _ in 0..n {
        let end = at + memchr::memchr(0, body.get(at..)?)?;
        let fields = body.get(end + 1..end + 19)?;
        let typ = u32::from_be_bytes(fields[6..10].try_into().ok()?);
        let typmod = i32::from_be_bytes(fields[12..16].try_into().ok()?);
        f(&body[at..end], typ, typmod);
        at = end + 19;
    }
    Some(())
}

/// A cheap digest of a Parse body's tail, for the statements shared by unnamed Parses
/// (`shared.rs`, which compares the tails too: two tails may share one).
pub fn fast_key(tail: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(tail);
    h.0
}

/// FNV-1a, 64 bits: a digest of descriptions compared within one process (cheaper than SipHash
/// on these few dozen bytes; nothing here is keyed by what a client chooses alone).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
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
    /// How many names each statement key has (more than one: the client prepared the same
    /// text and types under several names).
    keys: HashMap<Key, u32>,
    bytes: usize,
}

impl Statements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Box<[u8]>, &Arc<Statement>)> {
        self.names.iter()
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
        self.restore(name, stmt);
        Ok(())
    }

    /// Puts back what [`Statements::remove`] took (an undone Close), whatever the bound.
    pub fn restore(&mut self, name: &[u8], stmt: Arc<Statement>) {
        self.bytes += stmt.cost(name);
        *self.keys.entry(stmt.key).or_default() += 1;
        if let Some(old) = self.names.insert(name.into(), stmt) {
            self.bytes -= old.cost(name);
            self.forget_key(old.key);
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        let stmt = self.names.remove(name)?;
        self.bytes -= stmt.cost(name);
        self.forget_key(stmt.key);
        Some(stmt)
    }

    fn forget_key(&mut self, key: Key) {
        if let Some(n) = self.keys.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.keys.remove(&key);
            }
        }
    }

    /// Whether another of the client's names has the same text and types as `stmt`.
    pub fn shared(&self, stmt: &Statement) -> bool {
        self.keys.get(&stmt.key).is_some_and(|n| *n > 1)
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
    fn same_text_same_key() {
        let (a, b, c) = (stmt("SELECT 1"), stmt("SELECT 1"), stmt("SELECT 2"));
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, c.key);
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

    #[test]
    fn descriptions_compare_types_and_names_not_tables() {
        let params = [0u8, 1, 0, 0, 0, 23];
        let row = |table: u32, typ: u32| {
            let mut b = BytesMut::new();
            b.put_u16(1);
            b.put_slice(b"a\0");
            b.put_u32(table);
            b.put_i16(1);
            b.put_u32(typ);
            b.put_i16(4);
            b.put_i32(-1);
            b.put_i16(0);
            b.to_vec()
        };
        let a = Desc::new(&params, Some(&row(16400, 23))).unwrap();
        let b = Desc::new(&params, Some(&row(16500, 23))).unwrap();
        let c = Desc::new(&params, Some(&row(16400, 20))).unwrap();
        assert_eq!(
            a.digest, b.digest,
            "the same result from a table made again"
        );
        assert_ne!(a.digest, c.digest);
        assert_ne!(a.digest, Desc::new(&params, None).unwrap().digest);
        assert_eq!(a.param_types().collect::<Vec<_>>(), [23]);
        assert_eq!(a.columns().unwrap()[0].1, 23);
        assert!(Desc::new(&params, None).unwrap().no_data());
        let s = stmt("SELECT $1");
        assert_eq!(
            &s.tail_as_prepared(Some(&a))[..],
            b"SELECT $1\0\0\x01\0\0\0\x17"
        );
        assert!(Desc::new(&[0, 2, 0], None).is_none());
    }
}
