//! Sessions drawn from the protocol's whole vocabulary: simple and extended query, named and
//! unnamed statements and portals, Execute with a row limit, pipelines with an error part way,
//! Flush without Sync, COPY in and out, DDL that changes result types, deferred constraints and
//! savepoints, transactions left open between messages, settings, SQL that names a protocol
//! statement. Steps are drawn one at a time from the seed and the state the direct sessions are
//! in, so that no step waits on another client: with `pool.size` 1 only one client may hold a
//! transaction open, and DDL runs only while nobody holds one.

use super::proto::{FMsg, Proto};

/// A small, fixed generator (splitmix64), so that a seed means the same session everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// One step of a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Client `client` sends these messages and reads every reply they owe.
    Send { client: usize, msgs: Vec<FMsg> },
    /// Client `client` leaves and logs in again.
    Reconnect { client: usize },
}

impl Step {
    pub fn client(&self) -> usize {
        match self {
            Step::Send { client, .. } | Step::Reconnect { client } => *client,
        }
    }

    /// Messages sent (the unit of the tester's step count).
    pub fn weight(&self) -> usize {
        match self {
            Step::Send { msgs, .. } => msgs.len(),
            Step::Reconnect { .. } => 1,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Send { client, msgs } => {
                let m: Vec<String> = msgs.iter().map(ToString::to_string).collect();
                write!(f, "client {client}: {}", m.join(", "))
            }
            Step::Reconnect { client } => write!(f, "client {client}: reconnect"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Id,
    Mood,
    Int,
    Rows,
}

/// Statements a client prepares; `{c}` is the client's own table.
const TEMPLATES: &[(&str, &[Param])] = &[
    ("SELECT * FROM t_shared WHERE id = $1", &[Param::Id]),
    ("SELECT $1::mood::text", &[Param::Mood]),
    ("SELECT $1::int + 1", &[Param::Int]),
    (
        "UPDATE t_{c} SET n = n + 1 WHERE id = $1 RETURNING n",
        &[Param::Id],
    ),
    (
        "UPDATE t_{c} SET n = n - 1 WHERE id = $1 RETURNING n",
        &[Param::Id],
    ),
    (
        "SELECT g FROM generate_series(1, $1::int) g",
        &[Param::Rows],
    ),
    ("SELECT 10 / $1::int", &[Param::Int]),
    ("SELEC 1", &[]),
    ("SELECT 'plain'", &[]),
    (
        "COPY (SELECT g FROM generate_series(1, 3) g) TO STDOUT",
        &[],
    ),
    ("SELECT * FROM t_shared ORDER BY id", &[]),
    ("SELECT * FROM t_gone", &[]),
    ("SELECT current_setting('work_mem')", &[]),
];

/// Statement names, the unnamed one most often.
const NAMES: &[&str] = &["", "", "", "s1", "s2"];
const PORTALS: &[&str] = &["", "", "p1"];

/// What a client believes it has: the template behind each statement name it parsed.
#[derive(Debug, Clone, Default)]
pub struct Belief {
    statements: Vec<(String, usize)>,
}

impl Belief {
    fn template(&self, name: &str) -> Option<usize> {
        self.statements
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }

    fn parsed(&mut self, name: &str, t: usize) {
        self.statements.retain(|(n, _)| n != name);
        self.statements.push((name.to_owned(), t));
    }
}

pub struct Gen {
    pub rng: Rng,
    pub clients: usize,
    pub pool: usize,
    beliefs: Vec<Belief>,
    /// Steps a busy client has taken in a row (it is made to finish after a while).
    busy_for: Vec<usize>,
}

impl Gen {
    pub fn new(seed: u64, clients: usize, pool: usize) -> Self {
        Gen {
            rng: Rng::new(seed),
            clients,
            pool,
            beliefs: vec![Belief::default(); clients],
            busy_for: vec![0; clients],
        }
    }

    /// The next step, given where each client's direct session stands.
    pub fn step(&mut self, protos: &[Proto]) -> Step {
        let busy: Vec<usize> = (0..self.clients).filter(|&c| protos[c].busy()).collect();
        // With every connection held by a transaction, only those clients can go on.
        let candidates: Vec<usize> = if busy.len() >= self.pool {
            busy.clone()
        } else {
            (0..self.clients).collect()
        };
        let client = *self.rng.pick(&candidates);
        let p = &protos[client];
        if p.busy() {
            self.busy_for[client] += 1;
        } else {
            self.busy_for[client] = 0;
        }
        // Another client may open a transaction only while a connection stays free for the
        // rest; DDL only while no transaction holds locks.
        let others_busy = busy.iter().filter(|&&c| c != client).count();
        let may_hold = others_busy < self.pool;
        let ddl = busy.is_empty();
        if self.busy_for[client] > 12 {
            return self.finish(client, p);
        }
        if p.skipping && self.rng.chance(60) {
            return Step::Send {
                client,
                msgs: vec![FMsg::Sync],
            };
        }
        if !p.busy() && self.rng.chance(2) {
            self.beliefs[client] = Belief::default();
            return Step::Reconnect { client };
        }
        let msgs = match self.rng.below(100) {
            0..=39 => self.simple(client, p, may_hold, ddl),
            _ => self.extended(client, may_hold, p.status == b'E'),
        };
        Step::Send { client, msgs }
    }

    /// Ends a client's open transaction: Sync, then ROLLBACK.
    pub fn finish(&mut self, client: usize, p: &Proto) -> Step {
        let mut msgs = Vec::new();
        if p.unsynced || p.skipping {
            msgs.push(FMsg::Sync);
        }
        msgs.push(FMsg::Query("ROLLBACK".into()));
        Step::Send { client, msgs }
    }

    fn simple(&mut self, client: usize, p: &Proto, may_hold: bool, ddl: bool) -> Vec<FMsg> {
        let table = format!("c{client}");
        let named = self.named_plain(client);
        let mut sqls: Vec<String> = vec![
            "SELECT 1".into(),
            "SELECT 1; SELECT 2".into(),
            "SELECT 1/0".into(),
            "SELECT * FROM t_shared ORDER BY id".into(),
            "COMMIT".into(),
            "ROLLBACK".into(),
            "SAVEPOINT sp".into(),
            "ROLLBACK TO SAVEPOINT sp".into(),
            "RELEASE SAVEPOINT sp".into(),
            "SET CONSTRAINTS ALL IMMEDIATE".into(),
            format!("UPDATE t_{table} SET n = n + 1 WHERE id = 2"),
            format!("UPDATE t_{table} SET n = n - 1 WHERE id = 2"),
            "SHOW work_mem".into(),
            "SET work_mem = '5MB'".into(),
            "RESET work_mem".into(),
            "SET LOCAL work_mem = '6MB'".into(),
            "SELECT set_config('work_mem', '7MB', false)".into(),
            format!("EXECUTE {named}"),
            format!("EXPLAIN (COSTS OFF) EXECUTE {named}"),
            format!("DEALLOCATE {named}"),
            "DEALLOCATE ALL".into(),
            format!("SELECT count(*) FROM pg_prepared_statements WHERE name = '{named}'"),
            format!("COPY t_{table} TO STDOUT"),
            "".into(),
            "DISCARD ALL".into(),
        ];
        if may_hold {
            sqls.push("BEGIN".into());
            sqls.push("BEGIN; SAVEPOINT sp".into());
        }
        if ddl && !p.busy() {
            sqls.extend([
                "ALTER TABLE t_shared ADD COLUMN w int".into(),
                "ALTER TABLE t_shared DROP COLUMN IF EXISTS w".into(),
                "DROP TYPE IF EXISTS mood; CREATE TYPE mood AS ENUM ('ok', 'sad', 'meh')".into(),
                "CREATE TABLE IF NOT EXISTS t_gone (x int)".into(),
                "DROP TABLE IF EXISTS t_gone".into(),
            ]);
        }
        if self.rng.chance(6) {
            return self.copy_in(&table);
        }
        let sql = self.rng.pick(&sqls).clone();
        if sql.starts_with("DEALLOCATE ALL") || sql.starts_with("DISCARD ALL") {
            self.beliefs[client] = Belief::default();
        }
        vec![FMsg::Query(sql)]
    }

    /// A name the client may have parsed `SELECT 'plain'` under, for SQL that names it.
    fn named_plain(&mut self, client: usize) -> String {
        let plain = self.beliefs[client]
            .statements
            .iter()
            .filter(|(n, t)| !n.is_empty() && *t == 8)
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>();
        match plain.is_empty() {
            true => (*self.rng.pick(&["s1", "s2"])).to_owned(),
            false => self.rng.pick(&plain).clone(),
        }
    }

    fn copy_in(&mut self, table: &str) -> Vec<FMsg> {
        let mut msgs = vec![FMsg::Query(format!("COPY t_{table} (id, n) FROM STDIN"))];
        for _ in 0..self.rng.below(3) {
            let k = 100 + self.rng.below(5);
            msgs.push(FMsg::CopyData(format!("{k}\t{k}\n")));
        }
        msgs.push(if self.rng.chance(80) {
            FMsg::CopyDone
        } else {
            FMsg::CopyFail
        });
        msgs
    }

    fn extended(&mut self, client: usize, may_hold: bool, aborted: bool) -> Vec<FMsg> {
        let mut msgs = Vec::new();
        for _ in 0..1 + self.rng.below(5) {
            let m = match self.rng.below(100) {
                // PostgreSQL 15.18 crashes (signal 11) on the unnamed portal of a transaction
                // that began with a multi-statement Query and then failed: `BEGIN; SELECT 1`,
                // a failed `ROLLBACK TO SAVEPOINT`, Parse + Flush, Sync, then Describe and
                // Execute of portal "". Not in the unnamed portal of an aborted transaction.
                53..=88 if aborted => FMsg::Describe {
                    statement: true,
                    name: self.any_name(),
                },
                0..=27 => self.parse(client),
                28..=52 => self.bind(client),
                53..=64 => FMsg::Describe {
                    statement: self.rng.chance(50),
                    name: self.any_name(),
                },
                65..=88 => FMsg::Execute {
                    portal: (*self.rng.pick(PORTALS)).to_owned(),
                    max_rows: *self.rng.pick(&[0, 0, 0, 1, 2]),
                },
                _ => FMsg::Close {
                    statement: self.rng.chance(70),
                    name: self.any_name(),
                },
            };
            msgs.push(m);
        }
        if may_hold && self.rng.chance(25) {
            msgs.push(FMsg::Flush);
        } else {
            msgs.push(FMsg::Sync);
        }
        msgs
    }

    fn any_name(&mut self) -> String {
        (*self.rng.pick(NAMES)).to_owned()
    }

    fn parse(&mut self, client: usize) -> FMsg {
        let name = self.any_name();
        let t = self.rng.below(TEMPLATES.len());
        let (sql, params) = TEMPLATES[t];
        let types = if self.rng.chance(30) {
            params
                .iter()
                .map(|p| match p {
                    Param::Mood => 25,
                    _ => 23,
                })
                .collect()
        } else {
            Vec::new()
        };
        self.beliefs[client].parsed(&name, t);
        FMsg::Parse {
            name,
            sql: sql.replace("{c}", &format!("c{client}")),
            types,
        }
    }

    fn bind(&mut self, client: usize) -> FMsg {
        let stmt = self.any_name();
        let params = match self.beliefs[client].template(&stmt) {
            Some(t) if self.rng.chance(95) => TEMPLATES[t]
                .1
                .iter()
                .map(|p| Some(self.value(*p)))
                .collect(),
            _ => (0..self.rng.below(2))
                .map(|_| Some("1".to_owned()))
                .collect(),
        };
        FMsg::Bind {
            portal: (*self.rng.pick(PORTALS)).to_owned(),
            stmt,
            params,
        }
    }

    fn value(&mut self, p: Param) -> String {
        match p {
            Param::Id => (1 + self.rng.below(3)).to_string(),
            Param::Mood => (*self.rng.pick(&["ok", "sad", "meh"])).to_owned(),
            Param::Int => self.rng.below(4).to_string(),
            Param::Rows => (1 + self.rng.below(4)).to_string(),
        }
    }
}
