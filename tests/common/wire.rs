//! A raw protocol client (every message it sends and receives is visible to the test) and a
//! fake upstream server that misbehaves on cue, for the relay's message-level tests.

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rotagate::wire::msg;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One backend message: its type byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// An ErrorResponse's SQLSTATE (empty for other messages).
    pub fn code(&self) -> String {
        if self.tag != b'E' {
            return String::new();
        }
        msg::parse_error_fields(&self.body).0
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn severity(&self) -> String {
        String::from_utf8_lossy(msg::severity(&self.body)).into_owned()
    }
}

/// The one ErrorResponse among `got`, as (SQLSTATE, severity); fails unless there is exactly one.
pub fn sole_error(got: &[Msg]) -> (String, String) {
    let errors: Vec<_> = got.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(errors.len(), 1, "{got:?}");
    (errors[0].code(), errors[0].severity())
}

/// A client speaking the protocol by hand.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    /// BackendKeyData: (pid, secret key).
    pub key: (i32, i32),
}

impl Raw {
    /// Connects and logs in with SCRAM as `user` to `appdb`.
    pub async fn connect(addr: SocketAddr, user: &str, password: &str) -> Raw {
        Raw::connect_to(addr, user, password, "appdb").await
    }

    /// Connects and logs in with SCRAM as `user` to `database`.
    pub async fn connect_to(addr: SocketAddr, user: &str, password: &str, database: &str) -> Raw {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        stream.set_nodelay(true).unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            key: (0, 0),
        };
        let mut out = BytesMut::new();
        frontend::startup_message([("user", user), ("database", database)], &mut out).unwrap();
        raw.send(&out).await;
        raw.authenticate(password).await;
        loop {
            let m = raw.next().await.expect("login to finish");
            match m.tag {
                b'K' => {
                    let mut b = &m.body[..];
                    raw.key = (b.get_i32(), b.get_i32());
                }
                b'Z' => return raw,
                b'E' => panic!("login refused: {}", m.text()),
                _ => {}
            }
        }
    }

    async fn authenticate(&mut self, password: &str) {
        let m = self.next().await.expect("an authentication request");
        assert_eq!(m.tag, b'R', "{m:?}");
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut out = BytesMut::new();
        frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap();
        self.send(&out).await;
        let m = self.next().await.expect("SASL continue");
        scram.update(&m.body[4..]).unwrap();
        out.clear();
        frontend::sasl_response(scram.message(), &mut out).unwrap();
        self.send(&out).await;
        let m = self.next().await.expect("SASL final");
        scram.finish(&m.body[4..]).unwrap();
        let ok = self.next().await.expect("AuthenticationOk");
        assert_eq!((ok.tag, &ok.body[..]), (b'R', &[0, 0, 0, 0][..]));
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("send to the proxy");
    }

    /// Sends what the proxy may stop reading half way (it refuses the message and closes).
    pub async fn send_refused(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next message, or None when the connection closed (or nothing came within 30 s).
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let mut m = self.buf.split_to(len + 1);
                    let tag = m[0];
                    m.advance(5);
                    return Some(Msg {
                        tag,
                        body: m.to_vec(),
                    });
                }
            }
            let read = self.stream.read_buf(&mut self.buf);
            match tokio::time::timeout(Duration::from_secs(30), read).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery (all of them if the connection
    /// closes first).
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.next().await {
            let ready = m.tag == b'Z';
            out.push(m);
            if ready {
                break;
            }
        }
        out
    }

    /// Every message until the connection closes.
    pub async fn until_closed(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.next().await {
            out.push(m);
        }
        out
    }

    /// Sends a simple query without waiting for its reply.
    pub async fn start(&mut self, sql: &str) {
        let mut out = BytesMut::new();
        msg::query(&mut out, sql);
        self.send(&out).await;
    }

    /// A simple query; its messages up to ReadyForQuery.
    pub async fn query(&mut self, sql: &str) -> Vec<Msg> {
        let mut out = BytesMut::new();
        msg::query(&mut out, sql);
        self.send(&out).await;
        self.until_ready().await
    }
}

/// The text of each DataRow's first column in `msgs`.
pub fn first_column(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let len = i32::from_be_bytes([m.body[2], m.body[3], m.body[4], m.body[5]]);
            String::from_utf8_lossy(&m.body[6..6 + len as usize]).into_owned()
        })
        .collect()
}

/// The tags of `msgs`, as a string.
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// Tags and SQLSTATEs, e.g. "1 2 D C ZI" or "E:42P05 ZI" (notices and ParameterStatus left
/// out); with `columns`, a RowDescription shows its column count ("T2").
pub fn outline(msgs: &[Msg], columns: bool) -> String {
    msgs.iter()
        .filter(|m| !matches!(m.tag, b'N' | b'S'))
        .map(|m| match m.tag {
            b'E' => format!("E:{}", m.code()),
            b'Z' => format!("Z{}", m.body[0] as char),
            b'T' if columns => format!("T{}", u16::from_be_bytes([m.body[0], m.body[1]])),
            t => (t as char).to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Extended-protocol messages, built by hand.
pub struct Ext(pub BytesMut);

impl Ext {
    pub fn new() -> Self {
        Ext(BytesMut::new())
    }

    pub fn parse(mut self, name: &str, sql: &str) -> Self {
        let mut tail = sql.as_bytes().to_vec();
        tail.extend_from_slice(&[0, 0, 0]);
        msg::parse(&mut self.0, name.as_bytes(), &tail);
        self
    }

    /// Bind of `stmt` to the unnamed portal with text parameters.
    pub fn bind(mut self, stmt: &str, params: &[&[u8]]) -> Self {
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_slice(stmt.as_bytes());
        body.put_u8(0);
        body.put_i16(0);
        body.put_i16(params.len() as i16);
        for p in params {
            body.put_i32(p.len() as i32);
            body.put_slice(p);
        }
        body.put_i16(0);
        self.0.put_u8(b'B');
        self.0.put_u32(body.len() as u32 + 4);
        self.0.put_slice(&body);
        self
    }

    pub fn describe_statement(mut self, name: &str) -> Self {
        msg::describe_or_close(&mut self.0, b'D', b'S', name.as_bytes());
        self
    }

    pub fn describe_portal(mut self, name: &str) -> Self {
        msg::describe_or_close(&mut self.0, b'D', b'P', name.as_bytes());
        self
    }

    pub fn close_statement(mut self, name: &str) -> Self {
        msg::describe_or_close(&mut self.0, b'C', b'S', name.as_bytes());
        self
    }

    pub fn execute(mut self) -> Self {
        self.0.put_u8(b'E');
        self.0.put_u32(9);
        self.0.put_u8(0);
        self.0.put_u32(0);
        self
    }

    pub fn sync(mut self) -> Self {
        msg::empty(&mut self.0, b'S');
        self
    }

    pub fn flush(mut self) -> Self {
        msg::empty(&mut self.0, b'H');
        self
    }
}

impl Default for Ext {
    fn default() -> Self {
        Self::new()
    }
}

/// An upstream that logs anyone in without a password, answers every query with
/// `SELECT 1`, and sends a frame with a length below 4 for a query that contains `garbage`.
pub struct FakeUpstream {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(fake_session(s));
            }
        });
        FakeUpstream { port, task }
    }
}

async fn fake_session(mut s: TcpStream) {
    let mut buf = BytesMut::new();
    let Ok(len) = s.read_u32().await else { return };
    let mut startup = vec![0; len as usize - 4];
    if s.read_exact(&mut startup).await.is_err() {
        return;
    }
    let mut out = BytesMut::new();
    msg::auth_ok(&mut out);
    for (n, v) in [
        ("server_version", "15.0"),
        ("client_encoding", "UTF8"),
        ("session_authorization", "fake"),
    ] {
        msg::parameter_status(&mut out, n, v);
    }
    msg::backend_key_data(&mut out, 4242, 1);
    msg::ready_for_query(&mut out, b'I');
    if s.write_all(&out).await.is_err() {
        return;
    }
    loop {
        while buf.len() < 5
            || buf.len() < 1 + u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize
        {
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        let m = buf.split_to(len + 1);
        let mut out = BytesMut::new();
        match m[0] {
            b'Q' if m.windows(7).any(|w| w == b"garbage") => out.put_slice(b"D\0\0\0\x01"),
            b'Q' => {
                msg::command_complete(&mut out, "SELECT 1");
                msg::ready_for_query(&mut out, b'I');
            }
            b'X' => return,
            _ => continue,
        }
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}
