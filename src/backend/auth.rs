//! Upstream authentication: SCRAM-SHA-256, md5 and cleartext, with postgres-protocol's codecs.
//! The password leaves this module only inside protocol messages.

use super::query::{next_message, server_error};
use super::{BackendError, ServerConn};
use crate::secrets::Credentials;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::AsyncWriteExt;

pub async fn authenticate(conn: &mut ServerConn, creds: &Credentials) -> Result<(), BackendError> {
    let password = creds.password.expose().as_bytes();
    let mut out = BytesMut::new();
    loop {
        match next_message(conn).await? {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password, &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(creds.username.as_bytes(), password, body.salt());
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offers_scram = false;
                let mut mechs = body.mechanisms();
                while let Some(m) = mechs.next()? {
                    offers_scram |= m == SCRAM_SHA_256;
                }
                if !offers_scram {
                    return Err(BackendError::Protocol(
                        "the server offers no SASL mechanism rotagate supports".into(),
                    ));
                }
                return scram(conn, password, &mut out).await;
            }
            Message::ErrorResponse(e) => return Err(auth_error(server_error(&e))),
            _ => {
                return Err(BackendError::Protocol(
                    "unsupported upstream authentication request".into(),
                ));
            }
        }
        conn.stream.write_all(&out).await?;
        out.clear();
    }
}

async fn scram(
    conn: &mut ServerConn,
    password: &[u8],
    out: &mut BytesMut,
) -> Result<(), BackendError> {
    let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), out)?;
    conn.stream.write_all(out).await?;
    out.clear();
    match next_message(conn).await? {
        Message::AuthenticationSaslContinue(body) => scram.update(body.data())?,
        Message::ErrorResponse(e) => return Err(auth_error(server_error(&e))),
        _ => return Err(BackendError::Protocol("expected SASL continue".into())),
    }
    frontend::sasl_response(scram.message(), out)?;
    conn.stream.write_all(out).await?;
    out.clear();
    match next_message(conn).await? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data())?,
        Message::ErrorResponse(e) => return Err(auth_error(server_error(&e))),
        _ => return Err(BackendError::Protocol("expected SASL final".into())),
    }
    match next_message(conn).await? {
        Message::AuthenticationOk => Ok(()),
        Message::ErrorResponse(e) => Err(auth_error(server_error(&e))),
        _ => Err(BackendError::Protocol("expected AuthenticationOk".into())),
    }
}

/// Errors during the login exchange are login refusals.
fn auth_error(e: BackendError) -> BackendError {
    match e {
        BackendError::Server { code, message } if code.starts_with("28") => {
            BackendError::Auth { code, message }
        }
        other => other,
    }
}
