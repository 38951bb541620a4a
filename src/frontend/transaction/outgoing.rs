//! Client messages in transaction mode, one at a time: each gets its reply entries, and some
//! are rewritten. Named statements are [`super::named`]'s, the unnamed one
//! [`super::unnamed`]'s; a DEALLOCATE of a client's statement is answered by rotagate;
//! statements that change settings mark the transaction for a re-read; statements that pin do
//! so (or are refused with `on_pin = "error"`). A message rotagate refuses still goes upstream
//! as one that fails (Describe of a name no client can have, or an unparseable Query), so the
//! server's transaction state moves exactly as it would have; the server's error is then
//! replaced by rotagate's.

use super::checks;
use super::classify::{Class, PinReason, Sole};
use super::flow::{self, Acts, Capture};
use super::named;
use super::replies::{Effect, Entry, Expect, Local, Note};
use super::sqlnames::{self, Mentions};
use super::statements::Statements;
pub use super::tx::Tx;
use super::tx::{aborted, effects, push, refuse, text};
use super::unnamed::{self, Use};
use super::view;
use crate::frontend::relay::lane::{Decision, Need};
use crate::wire::{HEADER_LEN, msg, scan::cstr_end};

/// The statement an unnamed `DEALLOCATE name` deallocates upstream.
const THROWAWAY: &str = "rotagate_deallocate";

pub fn need(tag: u8) -> Need {
    match tag {
        b'Q' | b'P' | b'D' | b'C' => Need::Whole,
        b'B' => Need::Names,
        _ => Need::Nothing,
    }
}

/// Decides on the message at the front of `msg` (its header included). `msg` holds the whole
/// message when [`need`] says so; for a Bind, as much of it as has arrived (`len` in all).
pub fn decide(tag: u8, msg: &[u8], len: usize, tx: &mut Tx<'_>) -> Decision {
    let body = &msg[HEADER_LEN..];
    tx.flow.opening = !tx.flow.unsynced && tx.flow.replies.is_empty();
    if tx.flow.replay.is_some() {
        super::shared::keep(tag, msg, len, tx);
    }
    if tx.flow.mapped.is_some() {
        super::shared::probe_before(tag, msg, tx);
    }
    let probed = tx.out.len();
    if matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'H') {
        tx.flow.unsynced = true;
    }
    // After an error the server skips everything up to Sync, a Query or FunctionCall too;
    // nothing is owed for what it skips.
    if tx.flow.skipping && matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C' | b'Q' | b'F') {
        // A Describe whose own check failed (not one the server skipped) answers the failure;
        // a Query whose check failed ends the skipping (see `query_naming`).
        let own = (tag == b'D' && tx.flow.quiet_error.is_some()) || tag == b'Q';
        if !(own && checks::failed(tx.flow)) {
            tx.flow.hold = None;
            return Decision::Replace;
        }
    }
    let d = match tag {
        // A Query ends what extended messages before it left unsynced (their implicit
        // transaction; in a block, only their turn), as a Sync would.
        b'Q' => match query(body, tx) {
            Decision::Hold => Decision::Hold,
            d => {
                tx.flow.unsynced = false;
                d
            }
        },
        b'P' => parse(body, tx),
        b'B' => bind(body, len, tx),
        b'D' => describe(body, tx),
        b'C' => close(body, tx),
        b'E' => {
            tx.flow.executed = true;
            let effect = match tx.flow.portal_drops.take() {
                Some(discard_all) => drops(discard_all, true, tx),
                None => Effect::None,
            };
            push(tx, Entry::new(Expect::Execute).effect(effect))
        }
        b'S' => {
            (tx.flow.skipping, tx.flow.unsynced) = (false, false);
            tx.prepared.new_pipeline();
            tx.flow.replies.push(Entry::new(Expect::Sync));
            tx.flow.next_segment();
            Decision::Pass
        }
        b'F' => {
            tx.flow.reread = true;
            tx.flow.next_segment();
            push(tx, Entry::new(Expect::Query))
        }
        b'X' => Decision::Stop,
        _ => Decision::Pass,
    };
    // A message decided again later would be kept twice: the request is not retried.
    if matches!(d, Decision::Hold | Decision::NeedMore) {
        tx.flow.replay = None;
    }
    // Decided again when more of it is here: its probe goes then (its bytes are dropped now).
    if d == Decision::NeedMore && probed > 0 {
        tx.flow.replies.pop_back();
    }
    // rotagate's own messages (a Close of a duplicate, a Parse again) go first.
    match d {
        // A probe goes before the message, what it appends after (whole: a Parse).
        Decision::Append if probed > 0 && msg.len() == len => {
            let after = tx.out.split_off(probed);
            tx.out.extend_from_slice(msg);
            tx.out.extend_from_slice(&after);
            Decision::Replace
        }
        Decision::Pass if !tx.out.is_empty() => Decision::Inject,
        d => d,
    }
}

fn query(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    tx.flow.next_segment();
    // A Query's body is its text and a NUL.
    let sql = body.strip_suffix(&[0]).unwrap_or(body);
    let (settings, shadowed) = (&tx.client.settings, tx.client.shadowed.as_deref());
    let class = tx
        .client
        .recent
        .classify(sql, || flow::names(settings, shadowed));
    let reads_view = class.reads_view && tx.cfg.client_view;
    // The usual case, decided without looking for the client's statement names.
    if class.is_plain() && !reads_view && tx.client.statements.is_empty() {
        tx.flow.unnamed_dropped();
        return push(tx, Entry::new(Expect::Query).note(Note::UnnamedDrop));
    }
    let mentions = sqlnames::mentions(sql, reads_view, tx);
    if class.is_plain() && mentions.is_empty() {
        tx.flow.unnamed_dropped();
        return push(tx, Entry::new(Expect::Query).note(Note::UnnamedDrop));
    }
    if let Some(refusal) = effects(&class, tx) {
        return refuse(tx, true, refusal);
    }
    let answered_here = matches!(&class.sole, Some(Sole::Deallocate(n)) if tx.client.statements.contains(n))
        || matches!(class.sole, Some(Sole::DeallocateAll));
    // In an aborted transaction block the Query fails before anything it names is looked at
    // (and the server skips it after an error before it): a Query that fails stands in. Not
    // when it was rotagate's own preparation of a statement this Query names that failed and
    // aborted the block: the client gets that error, as from its EXECUTE (the long run's
    // seed 1012149).
    let ours = tx.flow.quiet_error.is_some() && !mentions.executed.is_empty();
    if tx.status == b'E' && !ours && (answered_here || !mentions.is_empty()) {
        return refuse(tx, true, aborted());
    }
    if !mentions.is_empty() && !answered_here && !class.drops_statements {
        return query_naming(sql, &mentions, tx);
    }
    let sql_prepared = tx.client.pins.has(PinReason::SqlPrepare);
    tx.flow.unnamed_dropped();
    match class.sole {
        Some(Sole::Deallocate(name)) if tx.client.statements.contains(&name) => {
            let mut taken = Statements::default();
            if let Some(stmt) = tx.client.statements.remove(&name) {
                taken.restore(&name, stmt);
            }
            deallocate(false, Effect::Deallocate(Box::new(taken)), tx)
        }
        Some(Sole::DeallocateAll) if !sql_prepared => {
            let taken = tx.client.statements.take_all();
            deallocate(true, Effect::Deallocate(Box::new(taken)), tx)
        }
        Some(Sole::DiscardAll)
            if tx.status == b'I' && !tx.flow.unsynced && !tx.client.pins.is_pinned() =>
        {
            discard_all(tx)
        }
        sole => {
            let effect = if class.drops_statements {
                drops(sole == Some(Sole::DiscardAll), sole.is_some(), tx)
            } else {
                Effect::None
            };
            let e = Entry::new(Expect::Query)
                .effect(effect)
                .note(Note::UnnamedDrop);
            push(tx, e)
        }
    }
}

/// A Query that names some of the client's statements (see [`sqlnames`]).
fn query_naming(sql: &[u8], m: &Mentions, tx: &mut Tx<'_>) -> Decision {
    let mut upstream = Vec::with_capacity(m.executed.len());
    for e in &m.executed {
        // PostgreSQL checks the number of arguments first, before it looks at the statement
        // again: a wrong count fails as that, without rotagate preparing the statement here
        // (a preparation that fails would abort the client's transaction block; the long
        // run's seed 1007231).
        let counted = e.stmt.desc.get().is_some_and(|d| d.param_count() != e.args);
        if counted && tx.status != b'E' {
            return refuse(tx, true, sqlnames::failed_execute(e, checks::stale()));
        }
        match named::held(tx) {
            named::Held::Wait => return Decision::Hold,
            // What PostgreSQL says of the client's statement now (in an aborted transaction:
            // that it is aborted).
            named::Held::Drop => {
                let error = tx.flow.quiet_error.take().unwrap_or_else(checks::stale);
                if tx.flow.skipping {
                    // The server skips to a Sync after rotagate's failed Parse (unsynced
                    // messages before it); the client's Query, which fails, would have ended
                    // their implicit transaction as that Sync does.
                    named::sync_quietly(tx);
                    tx.flow.skipping = false;
                }
                return refuse(tx, true, sqlnames::failed_execute(e, error));
            }
            // Its result type changed since the client prepared it; in an aborted
            // transaction the server says so itself.
            named::Held::Stale(Some(again)) if tx.status == b'E' => {
                upstream.push(again);
                continue;
            }
            named::Held::Stale(_) | named::Held::Cached => {
                return refuse(tx, true, sqlnames::failed_execute(e, checks::stale()));
            }
            named::Held::Go => {}
        }
        match named::resolve(&e.stmt, tx, named::Mode::Query) {
            named::Found::Here(name) => upstream.push(name),
            named::Found::Checking => return Decision::Hold,
        }
    }
    for (e, name) in m.executed.iter().zip(&upstream) {
        tx.flow
            .aliases
            .push((name.clone(), e.name.clone().into_boxed_slice()));
    }
    if !m.named.is_empty() {
        sqlnames::before(&m.named, tx);
    }
    let text = sqlnames::rewritten(sql, m, &upstream, tx);
    msg::query_bytes(tx.out, &text);
    tx.flow.unnamed_dropped();
    tx.flow
        .replies
        .push(Entry::new(Expect::Query).note(Note::UnnamedDrop));
    if !m.named.is_empty() {
        sqlnames::after(&m.named, tx);
    }
    Decision::Replace
}

/// A client's DEALLOCATE of its own statements: answered by rotagate outside any transaction.
/// Inside one, a Query would end an implicit transaction (and its portals) or drop the unnamed
/// portal of a transaction block, so the server runs one that deallocates a throwaway
/// statement, made first, quietly. In a transaction block with nothing unsynced that Parse
/// gets a Sync of its own (in an aborted transaction it fails, and the Query then fails as the
/// client's would). With extended messages unsynced it gets none: a Sync would end their
/// implicit transaction (an error at its commit belongs to the client's Query, which ends it
/// directly) or the skipping after their error (where the client's Query is skipped too).
fn deallocate(all: bool, effect: Effect, tx: &mut Tx<'_>) -> Decision {
    let tag = if all { "DEALLOCATE ALL" } else { "DEALLOCATE" };
    if !tx.flow.unsynced && tx.status == b'I' {
        let e = Entry::new(Expect::Local(Local::Deallocate { all }));
        tx.flow
            .replies
            .push(e.effect(effect).note(Note::UnnamedDrop));
        return Decision::Replace;
    }
    msg::parse(tx.out, THROWAWAY.as_bytes(), b"SELECT\0\0\0");
    tx.flow.replies.push(Entry::new(Expect::Parse).quiet());
    if !tx.flow.unsynced {
        msg::empty(tx.out, b'S');
        tx.flow.replies.push(Entry::new(Expect::Sync).quiet());
    }
    msg::query(tx.out, &format!("DEALLOCATE {THROWAWAY}"));
    let e = Entry::new(Expect::Tagged(tag)).effect(effect);
    tx.flow.replies.push(e.note(Note::UnnamedDrop));
    Decision::Replace
}

/// DISCARD ALL as its parts, but for DEALLOCATE ALL and DISCARD PLANS: the connection's
/// statements are shared by clients (the client's own names go), and invalidating their plans
/// would make another client's statement behave as its own would not.
const DISCARD_ALL: &str = "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
     SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// A client's DISCARD ALL outside a transaction block and a pipeline (in one it fails as it
/// would).
fn discard_all(tx: &mut Tx<'_>) -> Decision {
    msg::query(tx.out, DISCARD_ALL);
    let taken = tx.client.statements.take_all();
    tx.flow.replies.push(
        Entry::new(Expect::Tagged("DISCARD ALL"))
            .effect(Effect::Deallocate(Box::new(taken)))
            .note(Note::UnnamedDrop),
    );
    Decision::Replace
}

/// A statement that drops every prepared statement is on its way: the client's names and the
/// connection's statements go now (later messages of the pipeline make new ones), and come
/// back if it fails.
fn drops(discard_all: bool, sole: bool, tx: &mut Tx<'_>) -> Effect {
    Effect::Drops {
        client: Box::new(tx.client.statements.take_all()),
        upstream: Box::new(tx.prepared.take_all()),
        discard_all,
        sole,
    }
}

/// An unnamed `DEALLOCATE name` of one of the client's statements (psycopg's pipeline mode
/// sends these): upstream it deallocates a throwaway statement made for it, so that the server
/// answers it as it would have; the client's name goes when it is bound.
fn deallocate_unnamed(tx: &mut Tx<'_>) -> Decision {
    msg::describe_or_close(tx.out, b'C', b'S', THROWAWAY.as_bytes());
    tx.flow.replies.push(Entry::new(Expect::Close).hidden());
    msg::parse(tx.out, THROWAWAY.as_bytes(), b"SELECT\0\0\0");
    tx.flow.replies.push(Entry::new(Expect::Parse).hidden());
    let text = format!("DEALLOCATE {THROWAWAY}\0\0\0");
    msg::parse(tx.out, b"", text.as_bytes());
    unnamed::parse(text.as_bytes(), Class::default(), tx);
    Decision::Replace
}

fn parse(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    let Some(name_end) = cstr_end(body, 1) else {
        return push(tx, Entry::new(Expect::Parse));
    };
    let (name, tail) = (&body[..name_end - 1], &body[name_end..]);
    let (settings, shadowed) = (&tx.client.settings, tx.client.shadowed.as_deref());
    let class = tx
        .client
        .recent
        .classify(text(tail), || flow::names(settings, shadowed));
    if let Some(refusal) = effects(&class, tx) {
        return refuse(tx, false, refusal);
    }
    let read_view = (class.reads_view && tx.cfg.client_view)
        .then(|| view::tail(tail, tx))
        .flatten();
    let tail = read_view.as_deref().unwrap_or(tail);
    if !name.is_empty() {
        return named::parse(name, tail, class, tx);
    }
    tx.client.unnamed_acts = Acts::of(&class);
    if let Some(Acts::Deallocate(target)) = &tx.client.unnamed_acts {
        if tx.client.statements.contains(target) {
            return deallocate_unnamed(tx);
        }
        tx.client.unnamed_acts = None;
    }
    if read_view.is_none() && tx.client.unnamed_acts.is_none() {
        if let Some(d) = super::shared::parse(tail, &class, tx) {
            return d;
        }
    }
    unnamed::parse(tail, class, tx);
    if read_view.is_some() {
        msg::parse(tx.out, b"", tail);
        unnamed::learn(tx);
        return Decision::Replace;
    }
    unnamed::learn(tx);
    Decision::Append
}

fn bind(body: &[u8], len: usize, tx: &mut Tx<'_>) -> Decision {
    let Some(names_end) = cstr_end(body, 2) else {
        if HEADER_LEN + body.len() < len {
            return Decision::NeedMore;
        }
        return push(tx, Entry::new(Expect::Bind));
    };
    let portal_end = cstr_end(body, 1).expect("two strings hold one");
    let name = &body[portal_end..names_end - 1];
    if !name.is_empty() {
        return named::bind(body, len, portal_end, names_end, tx);
    }
    if checks::changed(tx.flow) && HEADER_LEN + body.len() < len {
        return Decision::NeedMore;
    }
    // PostgreSQL checks a Bind's counts before anything that parsing the statement again here
    // could fail on first (an aborted transaction, a table dropped since).
    let wanted = tx
        .client
        .unnamed
        .as_ref()
        .and_then(|u| u.described())
        .map(|d| d.param_count());
    if wanted.is_some() && unnamed::elsewhere(tx) {
        if let Some(decision) = checks::bind_counts(body, names_end, wanted, b"", tx) {
            return decision;
        }
    }
    if let Some(d) = unnamed_use(tx, Some((body, portal_end, names_end, len))) {
        return d;
    }
    let effect = match tx.client.unnamed_acts.clone() {
        None => Effect::None,
        Some(Acts::Deallocate(target)) => {
            let mut taken = Statements::default();
            if let Some(stmt) = tx.client.statements.remove(&target) {
                taken.restore(&target, stmt);
            }
            Effect::Deallocate(Box::new(taken))
        }
        Some(Acts::DropsAll { discard_all }) => {
            tx.flow.portal_drops = Some(discard_all);
            Effect::None
        }
    };
    push(tx, Entry::new(Expect::Bind).effect(effect))
}

/// A Bind or Describe of the unnamed statement: Some(decision) when it does not simply pass
/// (it waits, is refused, or its statement changed since the client prepared it); when it
/// passes, its Describe's replies are captured. `bind`: the Bind's body with its names' ends,
/// whole, and its length.
fn unnamed_use(tx: &mut Tx<'_>, bind: Option<(&[u8], usize, usize, usize)>) -> Option<Decision> {
    let desc = tx
        .client
        .unnamed
        .as_ref()
        .and_then(|u| u.described().cloned());
    match (named::held(tx), bind) {
        (named::Held::Wait, _) => return Some(Decision::Hold),
        (named::Held::Drop, Some(_)) => return Some(Decision::Replace),
        (named::Held::Drop, None) => {
            return Some(match tx.flow.quiet_error.take() {
                Some(e) => named::answer(desc.as_ref(), Some(e), tx),
                None => Decision::Replace,
            });
        }
        (named::Held::Stale(_) | named::Held::Cached, Some((body, portal_end, names_end, _))) => {
            return Some(named::stale_bind(body, portal_end, names_end, "", tx));
        }
        (named::Held::Stale(_), None) => {
            return Some(refuse(tx, false, checks::stale_described(desc.as_ref())));
        }
        (named::Held::Cached, None) => return Some(named::answer(desc.as_ref(), None, tx)),
        (named::Held::Go, _) => {}
    }
    if bind.is_none() && named::aborted_no_result(desc.as_ref(), tx) && unnamed::elsewhere(tx) {
        return Some(named::answer(desc.as_ref(), None, tx));
    }
    match unnamed::use_it(tx, bind.is_none()) {
        Use::Hold => Some(Decision::Hold),
        Use::Refuse(e) => Some(refuse(tx, false, e)),
        Use::Shared(upstream) => Some(match bind {
            Some((body, portal_end, _, len)) => {
                super::shared::bind(body, len, portal_end, upstream, tx)
            }
            None => super::shared::describe(upstream, tx),
        }),
        Use::Pass => {
            if bind.is_none() {
                tx.flow
                    .replies
                    .push(Entry::new(Expect::DescribeStatement).note(Note::Capture));
                tx.flow.captures.push_back(Capture::LearnUnnamed);
            }
            None
        }
    }
}

fn describe(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    let (kind, name) = (body.first().copied(), text(body.get(1..).unwrap_or(&[])));
    if kind != Some(b'S') {
        return push(tx, Entry::new(Expect::DescribePortal));
    }
    if !name.is_empty() {
        return named::describe(name, tx);
    }
    match unnamed_use(tx, None) {
        Some(d) => d,
        None => Decision::Pass,
    }
}

fn close(body: &[u8], tx: &mut Tx<'_>) -> Decision {
    let (kind, name) = (body.first().copied(), text(body.get(1..).unwrap_or(&[])));
    if kind != Some(b'S') {
        return push(tx, Entry::new(Expect::Close));
    }
    if name.is_empty() {
        unnamed::close(tx);
        return Decision::Replace;
    }
    named::close(name, tx)
}
