//! Two worlds run in lockstep: each client with a PostgreSQL session of its own (database
//! `appdb_direct`), and the same clients through rotagate in transaction mode (database `appdb`,
//! `pool.size` 1 or 2). Every step goes to both; the replies must be the same.

use super::proto::{FMsg, Proto, Transcript, exchange};
use super::sessions::{Gen, Step};
use crate::common::pg::Pg;
use crate::common::wire::Raw;
use crate::common::{APP_PASSWORD, APP_USER, CLIENT_PASSWORD, CLIENT_USER, TestProxy};

/// The schema every program starts from, in both databases.
fn schema(clients: usize) -> String {
    let mut sql = String::from(
        "DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public; \
         CREATE TYPE mood AS ENUM ('ok', 'sad'); \
         CREATE TABLE t_shared (id int PRIMARY KEY, v text); \
         INSERT INTO t_shared VALUES (1, 'one'), (2, 'two'), (3, 'three');",
    );
    for c in 0..clients {
        sql.push_str(&format!(
            " CREATE TABLE t_c{c} (id int PRIMARY KEY, n int NOT NULL, \
             UNIQUE (n) DEFERRABLE INITIALLY DEFERRED); \
             INSERT INTO t_c{c} VALUES (1, 1), (2, 2), (3, 3);"
        ));
    }
    sql
}

/// Makes `appdb_direct` beside `appdb` (once per cluster).
pub fn prepare_cluster(pg: &Pg) {
    if pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'appdb_direct'") == "0" {
        pg.sql(&format!("CREATE DATABASE appdb_direct OWNER {APP_USER}"));
    }
}

async fn reset(pg: &Pg, db: &str, clients: usize) {
    let url = format!(
        "host=127.0.0.1 port={} user={APP_USER} password={APP_PASSWORD} dbname={db}",
        pg.port
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to reset the schema");
    let task = tokio::spawn(conn);
    client
        .batch_execute(&schema(clients))
        .await
        .expect("reset the schema");
    drop(client);
    let _ = task.await;
}

/// A divergence README.md documents as what transaction mode cannot reproduce: PostgreSQL
/// does not invalidate a plan that refers to a type dropped and made again other than through
/// the statement's parameter types, and keeps failing it with `XX000 cache lookup failed for
/// type`; the same statement prepared by rotagate on another connection works. The worlds
/// differ after it, so the program ends there.
///
/// The other: PostgreSQL plans a prepared statement's first five executions with their
/// parameter values (custom plans, which fold constants: `10 / $1::int` with 0 fails at Bind)
/// and may use a generic plan after (the same error then comes at Execute). A client's
/// statement prepared again on another connection, or shared, has another count than in the
/// client's own session, so the same data error (class 22) can come one BindComplete earlier or
/// later. README.md documents it, with `plan_cache_mode` to fix the choice.
///
/// And a third: a Bind of a statement rotagate must first prepare on this connection, when the
/// text no longer prepares (its table or a type was dropped), fails with that error even where
/// PostgreSQL would first have found the Bind's portal name taken (`42P03`).
pub fn documented(d: &Divergence) -> bool {
    let stale_type = |t: &Transcript| t.iter().any(|m| m.contains("cache lookup failed for type"));
    (stale_type(&d.direct) && !stale_type(&d.proxied))
        || stale_type_first(d)
        || plan_choice(d)
        || portal_first(d)
        || shared_stale(d)
        || early_visible(d)
}

/// The first again, where a later message of the same step hits a stale type through rotagate
/// too: the first difference is the stale statement's own message, which fails directly and
/// passes through rotagate, whose statement for it was made after the type (the long run's seed
/// 1053616: the client's statement served by another client's statement of the same text).
fn stale_type_first(d: &Divergence) -> bool {
    let Some(at) = d.first_difference() else {
        return false;
    };
    d.direct[at].starts_with("E[S=ERROR C=XX000 M=cache lookup failed for type")
        && !d.proxied[at].starts_with("E[")
}

/// The fifth: an Execute with a row limit that leaves its portal suspended has changed rows
/// that the transaction's later commands see only after the next command boundary (a Parse, a
/// completed command, a Sync). A Bind or Describe of a statement the connection lacks makes
/// rotagate prepare it there first, and PostgreSQL's Parse is such a boundary: a read before
/// the client's own next boundary sees those changes one boundary early (the long run's seed
/// 1052077: a COPY showed a row an `UPDATE ... RETURNING` fetched one row at a time had
/// changed). The transcripts agree up to a row or a command tag of the same kind.
fn early_visible(d: &Divergence) -> bool {
    let Some(at) = d.first_difference() else {
        return false;
    };
    let kind = |m: &str| m.chars().next();
    let (a, b) = (&d.direct[at], &d.proxied[at]);
    d.early && matches!(kind(a), Some('D' | 'd' | 'C')) && kind(a) == kind(b)
}

/// Whether the tester runs rotagate with `pool.prepare_unnamed` (yes, unless
/// `DIFF_PREPARE_UNNAMED=0`).
fn prepare_unnamed() -> bool {
    std::env::var("DIFF_PREPARE_UNNAMED").map_or(true, |v| v != "0")
}

/// With `pool.prepare_unnamed` (unless `DIFF_PREPARE_UNNAMED=0`), the residual README.md documents:
/// where a request cannot be decided again (inside a transaction block, a pipeline that does
/// not end with its Sync), an unnamed statement served by a statement prepared before a schema
/// change fails as a named one would, where a fresh Parse succeeds (and the server then skips
/// what would have come, an error of its own included). The transcripts agree up to that error.
fn shared_stale(d: &Divergence) -> bool {
    if !prepare_unnamed() {
        return false;
    }
    let Some(at) = d.first_difference() else {
        return false;
    };
    let stale = |e: &str| {
        e.starts_with("E[S=ERROR C=0A000 M=cached plan must not change result type")
            || e.starts_with("E[S=ERROR C=XX000 M=cache lookup failed for type")
    };
    if stale(&d.proxied[at]) && !stale(&d.direct[at]) {
        return true;
    }
    // A first Bind that fails for its own reasons (a portal that exists, a parameter count, a
    // value that does not convert) before PostgreSQL revalidates the statement: the client gets
    // rotagate's ParseComplete and that error where directly the Parse failed (the long run's
    // seed 1030714).
    let gone = |e: &str| {
        ["42P01", "42703", "42883", "42704", "3F000", "42809"]
            .iter()
            .any(|c| e.starts_with(&format!("E[S=ERROR C={c}")))
    };
    let own = |e: &str| {
        ["42P03", "08P01", "22"]
            .iter()
            .any(|c| e.starts_with(&format!("E[S=ERROR C={c}")))
    };
    gone(&d.direct[at]) && d.proxied[at] == "1" && d.proxied.get(at + 1).is_some_and(|e| own(e))
}

/// The transcripts agree up to one error: 42P03 directly; through rotagate, the error of
/// preparing the text again: class 42 (a table it reads was dropped), or a type it was
/// prepared with that is gone (`XX000 cache lookup failed for type`: the long run's seed
/// 1010505).
fn portal_first(d: &Divergence) -> bool {
    let (direct, proxied) = (&d.direct, &d.proxied);
    let Some(at) = d.first_difference() else {
        return false;
    };
    let redone = |e: &str| {
        e.starts_with("E[S=ERROR C=42")
            || e.starts_with("E[S=ERROR C=XX000 M=cache lookup failed for type")
    };
    direct[at].starts_with("E[S=ERROR C=42P03")
        && redone(&proxied[at])
        && direct[at + 1..] == proxied[at + 1..]
}

/// The transcripts differ only in BindCompletes before the same class-22 error; or they agree
/// up to one Bind that one side completed and the other failed with a class-22 error (the
/// rest of that pipeline then differs as the server skips to Sync on one side only: the long
/// run's seed 1009817).
fn plan_choice(d: &Divergence) -> bool {
    let strip =
        |t: &Transcript| -> Vec<String> { t.iter().filter(|m| *m != "2").cloned().collect() };
    let data_error = |t: &Transcript| t.iter().any(|m| m.starts_with("E[S=ERROR C=22"));
    if d.direct != d.proxied && strip(&d.direct) == strip(&d.proxied) && data_error(&d.direct) {
        return true;
    }
    let first = d.first_difference();
    let at_bind = |a: &str, b: &str| a == "2" && b.starts_with("E[S=ERROR C=22");
    first.is_some_and(|i| {
        let (a, b) = (&d.direct[i], &d.proxied[i]);
        at_bind(a, b) || at_bind(b, a)
    })
}

/// Where a program stopped agreeing.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// Index of the step in the program.
    pub at: usize,
    pub direct: Transcript,
    pub proxied: Transcript,
    /// The step ran while a suspended portal's changes could show early ([`Proto::early`]).
    pub early: bool,
}

impl Divergence {
    /// Where the two transcripts first differ (None when one is a prefix of the other).
    pub fn first_difference(&self) -> Option<usize> {
        self.direct
            .iter()
            .zip(&self.proxied)
            .position(|(a, b)| a != b)
    }
}

pub struct Worlds<'a> {
    pg: &'a Pg,
    proxy: TestProxy,
    direct: Vec<Raw>,
    proxied: Vec<Raw>,
    /// Where each client's direct session stands (and, the same while they agree, its proxied one).
    pub protos: Vec<Proto>,
    proxied_protos: Vec<Proto>,
}

impl<'a> Worlds<'a> {
    /// Fresh schemas, a fresh rotagate with `pool` connections, and `clients` clients in each
    /// world.
    pub async fn new(pg: &'a Pg, clients: usize, pool: usize) -> Worlds<'a> {
        reset(pg, "appdb_direct", clients).await;
        reset(pg, "appdb", clients).await;
        let mut builder = TestProxy::builder(pg).pool_size(pool as u32);
        // With repeated unnamed statements prepared once (the riskier path), unless
        // `DIFF_PREPARE_UNNAMED=0` (rotagate's default, off).
        builder = builder.pool(if prepare_unnamed() {
            "prepare_unnamed = true"
        } else {
            "prepare_unnamed = false"
        });
        let proxy = builder.start().await;
        let mut w = Worlds {
            pg,
            proxy,
            direct: Vec::new(),
            proxied: Vec::new(),
            protos: vec![Proto::new(); clients],
            proxied_protos: vec![Proto::new(); clients],
        };
        for _ in 0..clients {
            w.direct.push(w.login_direct().await);
            w.proxied.push(w.login_proxied().await);
        }
        w
    }

    async fn login_direct(&self) -> Raw {
        let addr = ([127, 0, 0, 1], self.pg.port).into();
        Raw::connect_to(addr, APP_USER, APP_PASSWORD, "appdb_direct").await
    }

    async fn login_proxied(&self) -> Raw {
        Raw::connect(self.proxy.addr, CLIENT_USER, CLIENT_PASSWORD).await
    }

    /// Runs one step in both worlds: None while they agree.
    pub async fn apply(&mut self, at: usize, step: &Step) -> Option<Divergence> {
        match step {
            Step::Reconnect { client } => {
                let c = *client;
                self.direct[c] = self.login_direct().await;
                self.proxied[c] = self.login_proxied().await;
                self.protos[c] = Proto::new();
                self.proxied_protos[c] = Proto::new();
                None
            }
            Step::Send { client, msgs } => {
                let c = *client;
                let early_before = self.protos[c].early;
                self.protos[c].early_in_step = false;
                let direct = exchange(&mut self.direct[c], msgs, &mut self.protos[c]).await;
                let early = early_before || self.protos[c].early_in_step;
                if direct.last().is_some_and(|l| l == "hung" || l == "closed") {
                    let log =
                        std::fs::read_to_string(self.pg.dir().join("pg.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    panic!(
                        "the tester's own reading of the protocol is wrong: PostgreSQL did not \
                         send what it expected for step {at} ({step}); replies: {direct:?}\n\
                         PostgreSQL's log ends:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                let mut proxied =
                    exchange(&mut self.proxied[c], msgs, &mut self.proxied_protos[c]).await;
                if proxied.last().is_some_and(|l| l == "hung") {
                    // What the upstream sessions were doing, for the report (a lock, an idle
                    // connection rotagate forgot).
                    proxied.push(format!("upstream sessions: {}", self.activity()));
                    let (_, status) =
                        crate::common::tools::http(self.proxy.admin, "GET", "/status").await;
                    proxied.push(format!("rotagate status: {status}"));
                }
                if std::env::var_os("DIFF_TRACE").is_some() {
                    eprintln!("{at:4} {step}\n     direct  {direct:?}\n     proxied {proxied:?}");
                }
                if direct == proxied {
                    return None;
                }
                Some(Divergence {
                    at,
                    direct,
                    proxied,
                    early,
                })
            }
        }
    }

    /// The upstream sessions of the proxied world, one line each.
    fn activity(&self) -> String {
        self.pg.sql(
            "SELECT string_agg(format('pid %s %s wait %s/%s xact %s: %s', pid, state, \
             wait_event_type, wait_event, xact_start IS NOT NULL, left(query, 60)), ' | ') \
             FROM pg_stat_activity WHERE datname = 'appdb'",
        )
    }

    /// Whether a recorded step can run now without waiting on another client (a replay that
    /// left out earlier steps may reach one that cannot).
    pub fn runnable(&self, step: &Step, pool: usize) -> bool {
        let c = step.client();
        if c >= self.protos.len() {
            return false;
        }
        let busy: Vec<usize> = (0..self.protos.len())
            .filter(|&k| self.protos[k].busy())
            .collect();
        if busy.len() >= pool && !busy.contains(&c) {
            return false;
        }
        match step {
            Step::Reconnect { .. } => !self.protos[c].busy(),
            Step::Send { msgs, .. } => {
                // A Query the server would skip, or DDL another's transaction would block.
                let skipped_query = self.protos[c].skipping
                    && msgs
                        .iter()
                        .take_while(|m| !matches!(m, FMsg::Sync))
                        .any(|m| matches!(m, FMsg::Query(_)));
                let ddl = msgs.iter().any(|m| {
                    matches!(m, FMsg::Query(q) if q.starts_with("ALTER") || q.starts_with("DROP") || q.starts_with("CREATE"))
                });
                let others_busy = busy.iter().any(|&k| k != c);
                // See `sessions.rs`: PostgreSQL 15.18 can crash on the unnamed portal there.
                let crash = self.protos[c].status == b'E'
                    && msgs.iter().any(|m| {
                        matches!(m, FMsg::Describe { statement: false, name } | FMsg::Execute { portal: name, .. } if name.is_empty())
                    });
                if crash {
                    return false;
                }
                !(skipped_query || ddl && others_busy)
            }
        }
    }

    /// Every client back at rest (part of the program, and compared too).
    pub fn closing_steps(&self) -> Vec<Step> {
        let mut g = Gen::new(0, self.protos.len(), 1);
        (0..self.protos.len())
            .filter(|&c| self.protos[c].busy() || self.protos[c].skipping)
            .map(|c| g.finish(c, &self.protos[c]))
            .collect()
    }
}
