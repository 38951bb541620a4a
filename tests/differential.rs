//! Transaction mode against direct sessions, differentially (design 9.1): generated client
//! sessions run straight against PostgreSQL, each client on a session of its own, and through
//! rotagate with `pool.size` 1 and 2, so that clients share connections; every reply must be the
//! same. A short run with fixed seeds (`DIFF_SEED=n` runs that seed instead, `DIFF_MESSAGES=n` that
//! many messages a program, `DIFF_TRACE=1` prints every step's replies); the long run is
//! `cargo bench --bench differential`.

mod common;
#[path = "diff/mod.rs"]
mod diff;

use common::*;
use diff::{Shape, run, seed_from_env};

async fn check(seeds: &[u64], clients: usize, pool: usize, messages: usize) {
    let pg = app_cluster();
    diff::world::prepare_cluster(&pg);
    let mut total = 0;
    for &seed in seeds {
        let seed = seed_from_env(seed);
        let shape = Shape {
            seed,
            clients,
            pool,
            messages: diff::messages_from_env(messages),
        };
        match run(&pg, shape).await {
            Ok(ran) => total += ran.messages,
            Err(failure) => panic!("{failure}"),
        }
    }
    assert!(total > 0, "the programs ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_one_connection_see_what_sessions_of_their_own_see() {
    check(&[1, 2, 3], 2, 1, 400).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_on_two_connections_see_what_sessions_of_their_own_see() {
    check(&[11, 12, 13], 3, 2, 400).await;
}

/// Seeds the long run (`cargo bench --bench differential`) once diverged on, kept as they were
/// found: a Parse answered without a connection while one was merely between transactions
/// (1000011); an older upstream statement of the same text and description, planned against a
/// type dropped and made again since, served to a client that prepared after that (1000198);
/// a DEALLOCATE ALL Query after unsynced extended messages whose implicit transaction fails
/// at its commit (1000246); a DEALLOCATE ALL in an aborted transaction block after a Query
/// that followed unsynced messages (1000269); an unnamed statement whose Bind failed and whose
/// Close the server then skipped, bound again after a schema change (1000289); a DEALLOCATE
/// ALL in an aborted transaction block after a Close rotagate answered (1000438); an unnamed
/// Parse, then a Query that begins a transaction block, then a Close of it and a Sync (1000512);
/// a DEALLOCATE ALL Query whose implicit commit then fails on a deferred constraint (1000914);
/// an unnamed statement closed and parsed again before a Sync, then bound after a schema
/// change (1001384); a Query naming a client's statement in a string after unsynced messages
/// whose implicit commit fails (1001418); an unnamed statement whose Close an error in the same
/// pipeline made the server skip, bound after a schema change on another connection (1002943); a
/// Bind of a statement whose other name an `EXECUTE` used earlier in the transaction, then
/// closed (1004127, the error named the closed name); `EXECUTE` with the wrong number of
/// arguments in a transaction block, of a statement whose type was dropped (1007231); with
/// `prepare_unnamed`, an unnamed Parse served by a statement whose table was dropped since,
/// bound after another Parse in the same pipeline (1030042: the Parse fails, as directly); a
/// Bind with too few parameters of a shared statement in an aborted block, twice (1030049: the
/// count error each time, as directly, and the statement stays shared); a first Bind to a
/// portal that exists, of a shared statement whose table was dropped (1030714: the documented
/// residual, where the program ends); a Describe in a later Sync of a shared statement whose
/// table was dropped (1030773: its ParameterDescription, then the error, as directly); two
/// Parses served by shared statements in one pipeline, each probed, the replies of both in one
/// read (1031216: the second ParseComplete waits for its own probe); an Execute, then a Parse of
/// a text a shared statement serves, then an Execute of another portal of the same UPDATE in
/// the same pipeline (1042463: the Parse goes upstream, whose Parse makes the first Execute's
/// changes visible to the second, as directly); a Bind of a client's statement that the
/// connection lacked, after an `UPDATE ... RETURNING` portal was left suspended (1052077: the
/// documented residual, rotagate's Parse there shows the update early, where the program ends).
/// A Parse of a name the client holds, after a type was dropped and made again, that once got
/// no reply (1022107; passes since, the change that fixed it not traced); a client's statement
/// made before a type was dropped and made again, served through rotagate by another client's
/// statement of the same text made after (1053616: the documented stale type residual, where
/// a later message through rotagate fails on a stale type too). The
/// `prepare_unnamed` seeds run in both shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_the_long_run_diverged_on_stay_fixed() {
    check(
        &[
            1_000_011, 1_000_198, 1_000_269, 1_000_438, 1_000_512, 1_002_943, 1_007_231, 1_009_817,
            1_010_505, 1_012_149, 1_030_049, 1_030_714, 1_030_773, 1_031_216, 1_042_463, 1_052_077,
        ],
        3,
        2,
        2_000,
    )
    .await;
    check(
        &[
            1_000_246, 1_000_289, 1_000_914, 1_001_384, 1_001_418, 1_003_246, 1_004_127, 1_030_042,
            1_030_049, 1_030_714, 1_030_773, 1_031_216, 1_022_107, 1_053_616,
        ],
        2,
        1,
        2_000,
    )
    .await;
}
