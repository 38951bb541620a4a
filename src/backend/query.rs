//! Reading upstream messages outside the relay, and running rotagate's own short queries
//! (parameter sync, DISCARD ALL, health checks) on an idle connection.

use super::{BackendError, ServerConn};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The next whole message from the server, reading as needed.
pub async fn next_message(conn: &mut ServerConn) -> Result<Message, BackendError> {
    loop {
        if let Some(m) = Message::parse(&mut conn.rbuf)? {
            return Ok(m);
        }
        if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
            return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

pub fn server_error(e: &ErrorResponseBody) -> BackendError {
    let (mut code, mut message) = (String::new(), String::new());
    let mut fields = e.fields();
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    if code.starts_with("28") {
        BackendError::Auth { code, message }
    } else {
        BackendError::Server { code, message }
    }
}

/// Closes rotagate's statements `names` on an idle connection (Close each, then Sync) and waits
/// for ReadyForQuery. Only for a connection at rest.
pub async fn close_statements(
    conn: &mut ServerConn,
    names: &[std::sync::Arc<str>],
) -> Result<(), BackendError> {
    let mut buf = bytes::BytesMut::new();
    for name in names {
        crate::wire::msg::describe_or_close(&mut buf, b'C', b'S', name.as_bytes());
    }
    crate::wire::msg::empty(&mut buf, b'S');
    if let Err(e) = conn.stream.write_all(&buf).await {
        conn.broken = true;
        return Err(e.into());
    }
    loop {
        match next_message(conn).await {
            Ok(Message::ReadyForQuery(r)) => {
                conn.tx_status = r.status();
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => {
                conn.broken = true;
                return Err(e);
            }
        }
    }
}

/// Runs `sql` with the simple protocol and waits for ReadyForQuery. ParameterStatus messages
/// update the connection's params. The first error is returned after the server is ready again;
/// any error leaves the connection usable unless it is an I/O error. Only for a connection at
/// rest: every ReadyForQuery it owed has arrived.
pub async fn simple(conn: &mut ServerConn, sql: &str) -> Result<(), BackendError> {
    rows(conn, sql).await.map(drop)
}

/// As [`simple`], returning the text of every row's columns (None for NULL).
pub async fn rows(
    conn: &mut ServerConn,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, BackendError> {
    let mut rows = Vec::new();
    let mut buf = bytes::BytesMut::new();
    crate::wire::msg::query(&mut buf, sql);
    // A simple Query drops the session's unnamed statement.
    conn.prepared.unnamed = None;
    if let Err(e) = conn.stream.write_all(&buf).await {
        conn.broken = true;
        return Err(e.into());
    }
    let mut first_error = None;
    loop {
        let m = match next_message(conn).await {
            Ok(m) => m,
            Err(e) => {
                conn.broken = true;
                return Err(e);
            }
        };
        match m {
            Message::ParameterStatus(p) => {
                if let (Ok(n), Ok(v)) = (p.name(), p.value()) {
                    conn.params.report(n, v);
                }
            }
            Message::ErrorResponse(e) => {
                first_error.get_or_insert(server_error(&e));
            }
            Message::DataRow(r) => rows.push(row(&r)?),
            Message::ReadyForQuery(r) => {
                conn.tx_status = r.status();
                return first_error.map_or(Ok(rows), Err);
            }
            _ => {}
        }
    }
}

fn row(
    r: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>, BackendError> {
    let buf = r.buffer();
    r.ranges()
        .map(|range| Ok(range.map(|range| String::from_utf8_lossy(&buf[range]).into_owned())))
        .collect()
        .map_err(BackendError::Io)
}
