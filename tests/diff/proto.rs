//! The frontend messages the differential tester sends, and its own reading of the replies: for
//! each message, what PostgreSQL sends back and when it is complete, written from the protocol
//! documentation and independent of rotagate's reply tracker. Replies are normalised so that a
//! direct session and a proxied one compare equal where only pooling differs.

use crate::common::wire::Raw;
use bytes::{BufMut, BytesMut};
use rotagate::wire::msg;
use std::time::Duration;

/// One frontend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FMsg {
    Query(String),
    Parse {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    Bind {
        portal: String,
        stmt: String,
        params: Vec<Option<String>>,
    },
    Describe {
        statement: bool,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: u32,
    },
    Close {
        statement: bool,
        name: String,
    },
    Sync,
    Flush,
    CopyData(String),
    CopyDone,
    CopyFail,
}

impl FMsg {
    pub fn is_extended(&self) -> bool {
        matches!(
            self,
            FMsg::Parse { .. }
                | FMsg::Bind { .. }
                | FMsg::Describe { .. }
                | FMsg::Execute { .. }
                | FMsg::Close { .. }
                | FMsg::Flush
        )
    }

    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            FMsg::Query(sql) => msg::query(out, sql),
            FMsg::Parse { name, sql, types } => parse(out, name, sql, types),
            FMsg::Bind {
                portal,
                stmt,
                params,
            } => bind(out, portal, stmt, params),
            FMsg::Describe { statement, name } => msg::describe_or_close(
                out,
                b'D',
                if *statement { b'S' } else { b'P' },
                name.as_bytes(),
            ),
            FMsg::Close { statement, name } => msg::describe_or_close(
                out,
                b'C',
                if *statement { b'S' } else { b'P' },
                name.as_bytes(),
            ),
            FMsg::Execute { portal, max_rows } => {
                out.put_u8(b'E');
                out.put_u32(4 + portal.len() as u32 + 1 + 4);
                out.put_slice(portal.as_bytes());
                out.put_u8(0);
                out.put_u32(*max_rows);
            }
            FMsg::Sync => msg::empty(out, b'S'),
            FMsg::Flush => msg::empty(out, b'H'),
            FMsg::CopyData(row) => {
                out.put_u8(b'd');
                out.put_u32(4 + row.len() as u32);
                out.put_slice(row.as_bytes());
            }
            FMsg::CopyDone => msg::empty(out, b'c'),
            FMsg::CopyFail => {
                let reason = b"no thanks\0";
                out.put_u8(b'f');
                out.put_u32(4 + reason.len() as u32);
                out.put_slice(reason);
            }
        }
    }
}

fn parse(out: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
    let mut tail = sql.as_bytes().to_vec();
    tail.push(0);
    tail.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        tail.extend_from_slice(&t.to_be_bytes());
    }
    msg::parse(out, name.as_bytes(), &tail);
}

fn bind(out: &mut BytesMut, portal: &str, stmt: &str, params: &[Option<String>]) {
    let mut body = BytesMut::new();
    body.put_slice(portal.as_bytes());
    body.put_u8(0);
    body.put_slice(stmt.as_bytes());
    body.put_u8(0);
    body.put_i16(0);
    body.put_i16(params.len() as i16);
    for p in params {
        match p {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v.as_bytes());
            }
            None => body.put_i32(-1),
        }
    }
    body.put_i16(0);
    out.put_u8(b'B');
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
}

impl std::fmt::Display for FMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FMsg::Query(sql) => write!(f, "Query({sql:?})"),
            FMsg::Parse { name, sql, types } => write!(f, "Parse({name:?}, {sql:?}, {types:?})"),
            FMsg::Bind {
                portal,
                stmt,
                params,
            } => write!(f, "Bind({portal:?}, {stmt:?}, {params:?})"),
            FMsg::Describe { statement, name } => {
                write!(
                    f,
                    "Describe({}, {name:?})",
                    if *statement { 'S' } else { 'P' }
                )
            }
            FMsg::Execute { portal, max_rows } => write!(f, "Execute({portal:?}, {max_rows})"),
            FMsg::Close { statement, name } => {
                write!(f, "Close({}, {name:?})", if *statement { 'S' } else { 'P' })
            }
            FMsg::Sync => write!(f, "Sync"),
            FMsg::Flush => write!(f, "Flush"),
            FMsg::CopyData(row) => write!(f, "CopyData({row:?})"),
            FMsg::CopyDone => write!(f, "CopyDone"),
            FMsg::CopyFail => write!(f, "CopyFail"),
        }
    }
}

/// Where one client's protocol stands, as its own replies show it.
#[derive(Debug, Clone, Default)]
pub struct Proto {
    /// The status of the last ReadyForQuery (`I` at login).
    pub status: u8,
    /// Extended-protocol messages were sent since the last Sync.
    pub unsynced: bool,
    /// An extended-protocol message failed: the server skips everything up to Sync.
    pub skipping: bool,
    /// A portal was left suspended (PortalSuspended) since the last command boundary (a Parse,
    /// a completed command, a Sync): what its Execute changed is not yet visible to later
    /// commands of the transaction.
    pub suspended: bool,
    /// A Bind or Describe of a statement came while `suspended`: rotagate may have prepared the
    /// statement on its connection first, and PostgreSQL's Parse is a command boundary, so
    /// those changes show early through rotagate (README's residual) until the client's own
    /// next boundary.
    pub early: bool,
    /// `early` was set during the current step.
    pub early_in_step: bool,
}

impl Proto {
    pub fn new() -> Self {
        Proto {
            status: b'I',
            ..Proto::default()
        }
    }

    /// The client holds its session's attention: a transaction block, or an implicit
    /// transaction left open by extended messages without a Sync.
    pub fn busy(&self) -> bool {
        self.status != b'I' || self.unsynced
    }
}

/// The replies one step got, normalised, or how reading them failed.
pub type Transcript = Vec<String>;

/// How long a reply may take before the step counts as hung.
const PATIENCE: Duration = Duration::from_secs(10);

/// Sends `msgs` and reads every reply they owe. The transcript ends with `hung` or `closed` when
/// a reply never came.
pub async fn exchange(conn: &mut Raw, msgs: &[FMsg], p: &mut Proto) -> Transcript {
    let mut out = BytesMut::new();
    for m in msgs {
        m.encode(&mut out);
    }
    conn.send(&out).await;
    let mut t = Transcript::new();
    let mut i = 0;
    while i < msgs.len() {
        let m = &msgs[i];
        i += 1;
        if m.is_extended() {
            p.unsynced = true;
        }
        let replied = t.len();
        let binds = matches!(
            m,
            FMsg::Bind { .. }
                | FMsg::Describe {
                    statement: true,
                    ..
                }
        );
        if p.suspended && binds && !p.skipping {
            p.early = true;
            p.early_in_step = true;
        }
        let done = match m {
            _ if p.skipping && !matches!(m, FMsg::Sync) => true,
            FMsg::Flush | FMsg::CopyData(_) | FMsg::CopyDone | FMsg::CopyFail => true,
            FMsg::Query(_) => {
                let r = query(conn, &msgs[i..], p, &mut t).await;
                i += r.unwrap_or(0);
                r.is_some()
            }
            FMsg::Sync => {
                p.skipping = false;
                p.unsynced = false;
                until(conn, p, &mut t, |tag| tag == b'Z').await
            }
            FMsg::Parse { .. } => unit(conn, p, &mut t, |tag| tag == b'1').await,
            FMsg::Bind { .. } => unit(conn, p, &mut t, |tag| tag == b'2').await,
            FMsg::Close { .. } => unit(conn, p, &mut t, |tag| tag == b'3').await,
            FMsg::Describe {
                statement: true, ..
            } => unit(conn, p, &mut t, |tag| matches!(tag, b'T' | b'n')).await,
            FMsg::Describe {
                statement: false, ..
            } => unit(conn, p, &mut t, |tag| matches!(tag, b'T' | b'n')).await,
            FMsg::Execute { .. } => {
                unit(conn, p, &mut t, |tag| matches!(tag, b'C' | b'I' | b's')).await
            }
        };
        boundaries(&t[replied..], p);
        if !done {
            return t;
        }
    }
    t
}

/// Follows command boundaries in the replies to one message: a PortalSuspended leaves a
/// portal's changes unseen; a ParseComplete, a CommandComplete or a ReadyForQuery is a boundary.
fn boundaries(replies: &[String], p: &mut Proto) {
    for r in replies {
        if r == "s" {
            p.suspended = true;
        } else if r == "1" || r.starts_with('C') || r.starts_with('Z') {
            p.suspended = false;
            p.early = false;
        }
    }
}

/// Reads until `end(tag)` or an ErrorResponse (then the server skips to Sync). False when the
/// connection closed or hung (noted in the transcript).
async fn unit(conn: &mut Raw, p: &mut Proto, t: &mut Transcript, end: impl Fn(u8) -> bool) -> bool {
    loop {
        let Some(m) = next(conn, t).await else {
            return false;
        };
        t.push(normalize(m.tag, &m.body));
        if m.tag == b'E' {
            p.skipping = true;
            return true;
        }
        if end(m.tag) {
            return true;
        }
    }
}

/// Reads up to ReadyForQuery.
async fn until(
    conn: &mut Raw,
    p: &mut Proto,
    t: &mut Transcript,
    end: impl Fn(u8) -> bool,
) -> bool {
    loop {
        let Some(m) = next(conn, t).await else {
            return false;
        };
        t.push(normalize(m.tag, &m.body));
        if m.tag == b'Z' {
            p.status = m.body.first().copied().unwrap_or(b'?');
        }
        if end(m.tag) {
            return true;
        }
    }
}

/// A simple Query's replies up to ReadyForQuery. A COPY FROM STDIN takes the copy messages
/// that follow it in `rest`; returns how many it took, or None when the connection failed.
async fn query(conn: &mut Raw, rest: &[FMsg], p: &mut Proto, t: &mut Transcript) -> Option<usize> {
    let copy_len = rest
        .iter()
        .take_while(|m| matches!(m, FMsg::CopyData(_) | FMsg::CopyDone | FMsg::CopyFail))
        .count();
    loop {
        let m = next(conn, t).await?;
        t.push(normalize(m.tag, &m.body));
        if m.tag == b'Z' {
            p.status = m.body.first().copied().unwrap_or(b'?');
            // Copy messages sent after a Query that did not copy are ignored by the server.
            return Some(copy_len);
        }
    }
}

async fn next(conn: &mut Raw, t: &mut Transcript) -> Option<crate::common::wire::Msg> {
    match tokio::time::timeout(PATIENCE, conn.next()).await {
        Ok(Some(m)) => Some(m),
        Ok(None) => {
            t.push("closed".into());
            None
        }
        Err(_) => {
            t.push("hung".into());
            None
        }
    }
}

/// A message as compared: what pooling cannot change. OIDs of user objects (types, tables made
/// by the test) differ between databases, so numbers of five digits or more read as `N`;
/// ErrorResponse and NoticeResponse keep severity, SQLSTATE and message.
pub fn normalize(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => {
            let mut fields = Vec::new();
            for f in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
                let value = String::from_utf8_lossy(&f[1..]);
                match f[0] {
                    b'S' | b'C' => fields.push(format!("{}={value}", f[0] as char)),
                    b'M' => fields.push(format!("M={}", oids(&value))),
                    _ => {}
                }
            }
            format!("{}[{}]", tag as char, fields.join(" "))
        }
        b'T' => format!("T{}", row_description(body)),
        b't' => {
            let n = u16::from_be_bytes([body[0], body[1]]) as usize;
            let types: Vec<String> = (0..n)
                .map(|i| {
                    oid(u32::from_be_bytes(
                        body[2 + 4 * i..6 + 4 * i].try_into().unwrap(),
                    ))
                })
                .collect();
            format!("t[{}]", types.join(","))
        }
        b'A' => format!(
            "A{}",
            String::from_utf8_lossy(&body[4..]).replace('\0', "|")
        ),
        b'D' => format!("D{}", data_row(body)),
        _ => format!(
            "{}{}",
            tag as char,
            String::from_utf8_lossy(body).replace('\0', "|")
        ),
    }
}

fn oid(o: u32) -> String {
    if o >= 16384 {
        "user".into()
    } else {
        o.to_string()
    }
}

fn oids(text: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 5 {
            out.push('N')
        } else {
            out.push_str(&digits)
        }
        digits.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn row_description(body: &[u8]) -> String {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut cols = Vec::new();
    for _ in 0..n {
        let end = at + body[at..].iter().position(|b| *b == 0).unwrap();
        let name = String::from_utf8_lossy(&body[at..end]).into_owned();
        at = end + 1;
        let f = &body[at..at + 18];
        let table = u32::from_be_bytes(f[0..4].try_into().unwrap());
        let attnum = i16::from_be_bytes(f[4..6].try_into().unwrap());
        let typ = u32::from_be_bytes(f[6..10].try_into().unwrap());
        let typmod = i32::from_be_bytes(f[12..16].try_into().unwrap());
        let format = i16::from_be_bytes(f[16..18].try_into().unwrap());
        cols.push(format!(
            "{name}:{}:{attnum}:{}:{typmod}:{format}",
            oid(table),
            oid(typ)
        ));
        at += 18;
    }
    format!("[{}]", cols.join(","))
}

fn data_row(body: &[u8]) -> String {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut cols = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
        at += 4;
        if len < 0 {
            cols.push("NULL".to_owned());
        } else {
            cols.push(String::from_utf8_lossy(&body[at..at + len as usize]).into_owned());
            at += len as usize;
        }
    }
    format!("[{}]", cols.join(","))
}
