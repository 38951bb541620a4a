//! A client's first messages: TLS negotiation (pgwire's `negotiate_tls`: SSLRequest, direct
//! TLS, GSSENC refused), the StartupMessage or a CancelRequest, then the SCRAM-SHA-256
//! exchange. Ends by handing back the raw stream and any bytes already read.

use super::error::FrontendError;
use super::scram::ClientAuth;
use crate::wire::{self, WireError, msg};
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use pgwire::api::ClientInfo;
use pgwire::api::auth::sasl::scram::ScramServerAuth;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::messages::startup::SecretKey;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

pub use super::stream::ClientStream;

/// What a new connection asked for.
pub enum Hello {
    Login(Login),
    Cancel {
        pid: i32,
        key: i32,
    },
    /// Direct TLS without a configured certificate, or a closed socket: nothing to answer.
    Nothing,
}

/// A client that sent its StartupMessage, not yet authenticated.
pub struct Login {
    pub stream: ClientStream,
    pub rbuf: BytesMut,
    pub user: String,
    pub database: String,
    /// Startup parameters other than user, database and replication, as sent.
    pub params: Vec<(String, String)>,
    pub tls: bool,
    pub peer: SocketAddr,
}

/// TLS negotiation and the startup packet.
pub async fn hello(tcp: TcpStream, acceptor: Option<TlsAcceptor>) -> Result<Hello, FrontendError> {
    let peer = tcp.peer_addr().map_err(WireError::Io)?;
    let Some(mut framed) = pgwire::tokio::server::negotiate_tls::<()>(tcp, acceptor)
        .await
        .map_err(WireError::Io)?
    else {
        return Ok(Hello::Nothing);
    };
    let tls = framed.is_secure();
    // Bytes that came in with the SSLRequest, before the handshake, were not encrypted: taking
    // them as if they had been would let an on-path attacker inject a startup packet (the
    // CVE-2021-23214 class). PostgreSQL closes such a connection; so does rotagate.
    if tls && !framed.read_buffer().is_empty() {
        return Err(FrontendError::Protocol(
            "received unencrypted data after SSL request".into(),
        ));
    }
    let first = match framed.next().await {
        None => return Ok(Hello::Nothing),
        Some(Err(e)) => return Err(FrontendError::Protocol(e.to_string())),
        Some(Ok(m)) => m,
    };
    let startup = match first {
        PgWireFrontendMessage::Startup(s) => s,
        PgWireFrontendMessage::CancelRequest(c) => {
            let key = match c.secret_key {
                SecretKey::I32(k) => k,
                SecretKey::Bytes(b) if b.len() == 4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                SecretKey::Bytes(_) => return Ok(Hello::Nothing),
            };
            return Ok(Hello::Cancel { pid: c.pid, key });
        }
        _ => return Err(FrontendError::Protocol("expected a startup message".into())),
    };
    if startup.protocol_number_major != 3 {
        return Err(FrontendError::Unsupported(format!(
            "unsupported frontend protocol {}.{}",
            startup.protocol_number_major, startup.protocol_number_minor
        )));
    }
    let (user, database, params) = split_params(startup.parameters)?;
    let parts = framed.into_parts();
    Ok(Hello::Login(Login {
        stream: parts.io,
        rbuf: parts.read_buf,
        user,
        database,
        params,
        tls,
        peer,
    }))
}

/// Startup parameters other than user, database and replication.
pub type Params = Vec<(String, String)>;

/// A startup packet's parameters: the user, the database (the user's name when not given),
/// and the rest. Replication connections are refused.
pub fn split_params(
    mut params: std::collections::BTreeMap<String, String>,
) -> Result<(String, String, Params), FrontendError> {
    let mut user = params
        .remove("user")
        .ok_or_else(|| FrontendError::Protocol("no user name in the startup message".into()))?;
    let mut database = params.remove("database").unwrap_or_else(|| user.clone());
    // As PostgreSQL does: names longer than an identifier are cut to 63 bytes (so a name of
    // kilobytes never reaches a log line whole).
    truncate_name(&mut user);
    truncate_name(&mut database);
    if params
        .remove("replication")
        .is_some_and(|r| r != "false" && r != "off" && r != "0")
    {
        return Err(FrontendError::Unsupported(
            "rotagate does not proxy replication connections".into(),
        ));
    }
    Ok((user, database, params.into_iter().collect()))
}

/// Cuts `name` to NAMEDATALEN - 1 (63) bytes, at a character boundary, as PostgreSQL cuts the
/// user and database names of a startup packet.
fn truncate_name(name: &mut String) {
    if name.len() > 63 {
        let mut end = 63;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
}

/// SCRAM-SHA-256 against the static client logins. Unknown users go through a mock exchange
/// and fail exactly like a wrong password. `step` is called as each client message comes in.
pub async fn authenticate(
    login: &mut Login,
    auth: &ClientAuth,
    max_len: usize,
    step: &(dyn Fn() + Sync),
) -> Result<(), FrontendError> {
    let secret = match auth.get(&login.user) {
        Some(v) => super::scram::pgwire_secret(v),
        None => auth.mock(&login.user),
    };
    let mut out = BytesMut::new();
    msg::auth_sasl(&mut out);
    login.stream.write_all(&out).await.map_err(WireError::Io)?;
    out.clear();

    let first = expect_password(login, max_len).await?;
    step();
    let first = sasl_initial(first)?;
    let server = ScramServerAuth::new();
    let (server_first, waiting) = server
        .on_client_first_message_with_secret(&first, secret)
        .map_err(|e| FrontendError::Protocol(e.to_string()))?;
    msg::auth_sasl_data(&mut out, 11, server_first.as_bytes());
    login.stream.write_all(&out).await.map_err(WireError::Io)?;
    out.clear();

    let last = expect_password(login, max_len).await?;
    step();
    let server_final = waiting
        .on_client_final_message(&last)
        .map_err(|_| FrontendError::AuthFailed(login.user.clone()))?;
    if auth.get(&login.user).is_none() {
        return Err(FrontendError::AuthFailed(login.user.clone()));
    }
    msg::auth_sasl_data(&mut out, 12, server_final.as_bytes());
    login.stream.write_all(&out).await.map_err(WireError::Io)?;
    Ok(())
}

/// The client-first message out of a SASLInitialResponse body: the mechanism (only
/// SCRAM-SHA-256), then the length of the data, then the data.
pub fn sasl_initial(mut body: BytesMut) -> Result<BytesMut, FrontendError> {
    let mechanism = wire::get_cstr(&mut body)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(FrontendError::Protocol(format!(
            "unsupported SASL mechanism {mechanism:?}"
        )));
    }
    if body.remaining() < 4 {
        return Err(FrontendError::Protocol("short SASLInitialResponse".into()));
    }
    body.advance(4);
    Ok(body)
}

/// SASL messages from a client are a few hundred bytes; a header claiming more before the
/// client has authenticated is refused rather than reserved for.
const MAX_AUTH_MESSAGE: usize = 4096;

async fn expect_password(login: &mut Login, max_len: usize) -> Result<BytesMut, FrontendError> {
    let max = max_len.min(MAX_AUTH_MESSAGE);
    let m = wire::read_message(&mut login.stream, &mut login.rbuf, max).await?;
    if m.tag != b'p' {
        return Err(FrontendError::Protocol("expected a SASL response".into()));
    }
    Ok(m.body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn startup_names_are_cut_as_postgresql_cuts_them() {
        let long = "u".repeat(5000);
        let params = [
            ("user".to_owned(), long),
            ("database".to_owned(), "é".repeat(40)),
        ];
        let (user, database, _) = super::split_params(params.into_iter().collect()).unwrap();
        assert_eq!(user, "u".repeat(63));
        // 40 two-byte characters: cut to 31 of them (62 bytes), not inside the 32nd.
        assert_eq!(database, "é".repeat(31));
    }
}
