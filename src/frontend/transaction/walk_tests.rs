//! Property tests of the relay's core: random messages, cut into reads at random points and
//! written out in random pieces, come out exactly as they do when everything arrives at once,
//! in both directions and both modes, with transaction mode's real decisions (named statements
//! renamed, Closes answered, DEALLOCATE answered, pins, replies matched).

use super::replies::{Entry, Expect};
use crate::config::PoolConfig;
use crate::frontend::fuzzing::Side;
use crate::frontend::relay::lane::{Lane, Policy, walk};
use crate::frontend::session::Session;
use crate::wire::msg;
use bytes::{Buf, BufMut, BytesMut};
use proptest::prelude::*;

fn cfg() -> PoolConfig {
    PoolConfig {
        max_client_statement_bytes: 1 << 20,
        ..crate::frontend::fuzzing::pool_config()
    }
}

/// A client message from a small vocabulary, with bodies up to 20 KB.
fn client_message() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec!["", "s0", "s1", "s2", "rotagate_x"]);
    let pad = 0usize..20_000;
    prop_oneof![
        (0usize..4, pad.clone()).prop_map(|(k, n)| {
            let sql = [
                "SELECT 1",
                "SET work_mem = '7MB'",
                "DEALLOCATE s1",
                "LISTEN ch",
            ][k];
            let mut b = BytesMut::new();
            msg::query(&mut b, &format!("{sql} --{}", "x".repeat(n)));
            b.to_vec()
        }),
        (name.clone(), 0usize..3, pad.clone()).prop_map(|(name, k, n)| {
            let sql = format!("SELECT {k} /*{}*/", "p".repeat(n % 300));
            let mut tail = sql.into_bytes();
            tail.extend_from_slice(&[0, 0, 0]);
            let mut b = BytesMut::new();
            msg::parse(&mut b, name.as_bytes(), &tail);
            b.to_vec()
        }),
        (name.clone(), pad).prop_map(|(name, n)| {
            let mut body = BytesMut::new();
            body.put_u8(0);
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_i16(0);
            body.put_i16(1);
            body.put_i32(n as i32);
            body.put_slice(&vec![b'v'; n]);
            body.put_i16(0);
            let mut b = BytesMut::new();
            b.put_u8(b'B');
            b.put_u32(body.len() as u32 + 4);
            b.put_slice(&body);
            b.to_vec()
        }),
        (name.clone(), any::<bool>()).prop_map(|(name, close)| {
            let mut b = BytesMut::new();
            let tag = if close { b'C' } else { b'D' };
            msg::describe_or_close(&mut b, tag, b'S', name.as_bytes());
            b.to_vec()
        }),
        prop::sample::select(vec![b'E', b'S', b'H']).prop_map(|tag| {
            let mut b = BytesMut::new();
            if tag == b'E' {
                b.put_u8(b'E');
                b.put_u32(9);
                b.put_u8(0);
                b.put_u32(0);
            } else {
                msg::empty(&mut b, tag);
            }
            b.to_vec()
        }),
    ]
}

/// Runs `input` through `walk` with `policy`, the bytes arriving in pieces that end at `cuts`
/// and leaving in pieces of `writes` bytes; returns what was written. The walk may stop at a
/// message that waits for replies (none come here): what is left is checked by the caller.
fn relay(
    input: &[u8],
    cuts: &[usize],
    writes: &[usize],
    max: usize,
    policy: &mut impl Policy,
) -> Vec<u8> {
    let (mut src, mut lane, mut scratch) = (BytesMut::new(), Lane::default(), BytesMut::new());
    let mut out = Vec::new();
    let mut at = 0;
    let mut w = writes.iter().cycle();
    for &cut in cuts.iter().chain([input.len()].iter()) {
        let cut = cut.clamp(at, input.len());
        src.extend_from_slice(&input[at..cut]);
        at = cut;
        walk(&mut src, &mut lane, max, &mut scratch, policy).expect("valid messages");
        let n = (*w.next().unwrap_or(&usize::MAX)).min(lane.queued());
        write(&mut lane, &mut src, n, &mut out);
        walk(&mut src, &mut lane, max, &mut scratch, policy).expect("valid messages");
    }
    while lane.queued() > 0 {
        let n = lane.queued();
        write(&mut lane, &mut src, n, &mut out);
        walk(&mut src, &mut lane, max, &mut scratch, policy).expect("valid messages");
    }
    assert!(lane.at_boundary(), "no message was left half decided");
    out.extend_from_slice(b"|left:");
    out.extend_from_slice(&src);
    out
}

fn write(lane: &mut Lane, src: &mut BytesMut, n: usize, out: &mut Vec<u8>) {
    let (a, b) = lane.slices(src);
    let all = [a, b].concat();
    out.extend_from_slice(&all[..n]);
    lane.wrote(src, n);
}

/// The client direction in transaction mode; returns the bytes sent upstream and the number
/// of replies owed.
fn client_run(input: &[u8], cuts: &[usize], writes: &[usize]) -> (Vec<u8>, usize) {
    let (mut side, cfg) = (Side::default(), cfg());
    let out = relay(input, cuts, writes, 1 << 20, &mut side.client_policy(&cfg));
    (out, side.flow.replies.len())
}

/// Server replies to `queries` simple Queries, each with rows of random sizes.
fn server_replies(rows: &[usize]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for (i, n) in rows.iter().enumerate() {
        msg::parameter_status(&mut b, "application_name", &format!("a{i}"));
        b.put_u8(b'D');
        b.put_u32(4 + 2 + 4 + *n as u32);
        b.put_i16(1);
        b.put_i32(*n as i32);
        b.put_slice(&vec![b'r'; *n]);
        msg::command_complete(&mut b, "SELECT 1");
        msg::ready_for_query(&mut b, b'I');
    }
    b.to_vec()
}

fn server_run(input: &[u8], queries: usize, cuts: &[usize], writes: &[usize], tx: bool) -> Vec<u8> {
    let mut side = Side::default();
    if tx {
        for _ in 0..queries {
            side.flow.replies.push(Entry::new(Expect::Query));
        }
        let mut out = relay(input, cuts, writes, 1 << 30, &mut side.server_policy());
        assert!(side.flow.replies.is_empty(), "every reply matched");
        out.truncate(out.len() - b"|left:".len());
        return out;
    }
    let counter = metrics::Counter::noop();
    let mut session = Session::new(&counter, 1 << 20);
    session.pending = queries as u32;
    let mut policy = session.incoming(&mut side.status, &mut side.params);
    let mut out = relay(input, cuts, writes, 1 << 30, &mut policy);
    assert_eq!(session.pending, 0, "every reply matched");
    out.truncate(out.len() - b"|left:".len());
    out
}

/// Cut points: anywhere (`anywhere`), and near the start and end of messages, where headers and
/// names are cut (`near`: for message i, an offset from its start, or from its end if negative).
fn cut_points(
    lens: &[usize],
    anywhere: &[prop::sample::Index],
    near: &[(prop::sample::Index, i64)],
) -> Vec<usize> {
    let total: usize = lens.iter().sum();
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, len| {
            let s = *at;
            *at += len;
            Some(s)
        })
        .collect();
    let mut cuts: Vec<usize> = anywhere.iter().map(|i| i.index(total + 1)).collect();
    for (i, off) in near {
        let k = i.index(lens.len());
        let base = if *off < 0 {
            starts[k] + lens[k]
        } else {
            starts[k]
        };
        cuts.push((base as i64 + off).clamp(0, total as i64) as usize);
    }
    cuts.sort_unstable();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn client_bytes_do_not_depend_on_how_they_were_cut(
        msgs in prop::collection::vec(client_message(), 1..24),
        anywhere in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        near in prop::collection::vec((any::<prop::sample::Index>(), -3i64..12), 0..40),
        writes in prop::collection::vec(1usize..50_000, 1..8),
    ) {
        let input: Vec<u8> = msgs.concat();
        let lens: Vec<usize> = msgs.iter().map(Vec::len).collect();
        let cuts = cut_points(&lens, &anywhere, &near);
        let whole = client_run(&input, &[], &[usize::MAX]);
        let cut = client_run(&input, &cuts, &writes);
        prop_assert_eq!(whole.1, cut.1);
        prop_assert!(whole.0 == cut.0, "the bytes sent upstream differ");
    }

    #[test]
    fn server_bytes_do_not_depend_on_how_they_were_cut(
        rows in prop::collection::vec(0usize..40_000, 1..12),
        anywhere in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        writes in prop::collection::vec(1usize..50_000, 1..8),
    ) {
        let input = server_replies(&rows);
        let cuts = cut_points(&[input.len()], &anywhere, &[]);
        for tx in [false, true] {
            let out = server_run(&input, rows.len(), &cuts, &writes, tx);
            prop_assert!(out == input, "replies to plain queries pass unchanged");
        }
    }

    #[test]
    fn session_mode_passes_client_bytes_unchanged(
        msgs in prop::collection::vec(client_message(), 1..24),
        anywhere in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        near in prop::collection::vec((any::<prop::sample::Index>(), -3i64..12), 0..40),
    ) {
        let input: Vec<u8> = msgs.concat();
        let lens: Vec<usize> = msgs.iter().map(Vec::len).collect();
        let cuts = cut_points(&lens, &anywhere, &near);
        let counter = metrics::Counter::noop();
        let mut policy = Session::new(&counter, 1 << 20);
        let mut out = relay(&input, &cuts, &[7, 100, 5000], 1 << 20, &mut policy);
        out.truncate(out.len() - b"|left:".len());
        prop_assert!(out == input);
    }
}

#[test]
fn named_statements_are_renamed_and_closes_answered_locally() {
    let mut input = BytesMut::new();
    let mut tail = b"SELECT 1".to_vec();
    tail.extend_from_slice(&[0, 0, 0]);
    msg::parse(&mut input, b"s1", &tail);
    msg::describe_or_close(&mut input, b'C', b'S', b"s1");
    msg::empty(&mut input, b'S');
    let (out, owed) = client_run(&input, &[3, 9], &[4]);
    let mut out = BytesMut::from(&out[..]);
    assert_eq!(out[0], b'P');
    let len = (&out[1..5]).get_u32() as usize;
    let name_end = out[5..].iter().position(|b| *b == 0).unwrap();
    assert!(out[5..5 + name_end].starts_with(b"rotagate_"));
    out.advance(len + 1);
    assert_eq!(
        out[0], b'D',
        "a hidden Describe learns what the server made of it"
    );
    let len = (&out[1..5]).get_u32() as usize;
    out.advance(len + 1);
    assert_eq!(
        &out[..],
        b"S\0\0\0\x04|left:",
        "the Close was not sent upstream"
    );
    assert_eq!(
        owed, 4,
        "ParseComplete, the hidden Describe, a local CloseComplete, ReadyForQuery"
    );
}
