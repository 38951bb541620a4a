//! Server errors that name rotagate's upstream statements, rewritten with the client's own
//! names (split from `named.rs`, which makes those statements).

use super::flow::{ClientState, Flow};
use super::replies::Effect;
use super::statements::Statement;
use crate::backend::prepared::Prepared;
use crate::wire::msg;
use bytes::Bytes;
use std::sync::Arc;

/// A server error that names rotagate's upstream statements (`bind message supplies 0
/// parameters, but prepared statement "rotagate_3" requires 1`), with the client's names in
/// their place; None when it names none.
pub fn client_names_in_error(
    body: &[u8],
    named: Option<&[u8]>,
    client: &ClientState,
    prepared: &Prepared,
    flow: &Flow,
) -> Option<Bytes> {
    let m = msg::field(body, b'M');
    memchr::memmem::find(m, b"\"rotagate_")?;
    let text = String::from_utf8_lossy(m);
    let mut out = String::with_capacity(text.len());
    let mut rest = &*text;
    while let Some(i) = rest.find("\"rotagate_") {
        out.push_str(&rest[..=i]);
        let after = &rest[i + 1..];
        let end = after.find('"').unwrap_or(after.len());
        let upstream = &after[..end];
        let name = named
            .map(Box::<[u8]>::from)
            .or_else(|| client_name(upstream, client, prepared, flow));
        match name {
            Some(name) => out.push_str(&String::from_utf8_lossy(&name)),
            None => out.push_str(upstream),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    let mut b = bytes::BytesMut::new();
    msg::error_with_message(&mut b, body, &out);
    Some(b.freeze())
}

/// The client's name for a statement of the connection's.
fn client_name(
    upstream: &str,
    client: &ClientState,
    prepared: &Prepared,
    flow: &Flow,
) -> Option<Box<[u8]>> {
    if let Some((_, name)) = flow.aliases.iter().find(|(n, _)| &**n == upstream) {
        return Some(name.clone());
    }
    let fresh = flow
        .fresh
        .iter()
        .find(|(_, n)| &**n == upstream)
        .map(|(s, _)| s);
    let slot = prepared.slot(upstream);
    let same = |s: &Arc<Statement>| {
        fresh.is_some_and(|f| Arc::ptr_eq(f, s))
            || slot.is_some_and(|sl| {
                sl.key == s.key && sl.desc.is_some() && sl.desc == s.desc.get().map(|d| d.digest)
            })
    };
    if let Some((name, _)) = client.statements.iter().find(|(_, s)| same(s)) {
        return Some(name.clone());
    }
    // A Close or DEALLOCATE decided after the message that failed already took the name.
    flow.replies.iter().find_map(|e| match e.effect_ref()? {
        Effect::ClientClose(name, s) if same(s) => Some(name.clone()),
        Effect::Deallocate(taken) | Effect::Drops { client: taken, .. } => {
            taken.iter().find(|(_, s)| same(s)).map(|(n, _)| n.clone())
        }
        _ => None,
    })
}
