//! Upstream authentication: SCRAM-SHA-256(-PLUS), md5, and cleartext only over verified TLS,
//! with postgres-protocol's codecs.
//! The password leaves this module only inside protocol messages.

use super::query::{next_message, server_error};
use super::{BackendError, ServerConn};
use crate::config::ChannelBinding;
use crate::secrets::SecretString;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding as Binding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::AsyncWriteExt;

/// What the connection allows the login to do with the password.
pub struct AuthPolicy {
    /// TLS with the server's certificate verified (`verify-ca`, `verify-full`): the only
    /// connection a cleartext password may be sent over.
    pub verified_tls: bool,
    pub binding: ChannelBinding,
    /// `upstream.allow_md5`.
    pub allow_md5: bool,
    /// `tls-server-end-point` data of the server's certificate, when the connection is TLS
    /// and the certificate has one.
    pub end_point: Option<Vec<u8>>,
}

impl AuthPolicy {
    fn refuse_unbound(&self, what: &str) -> Result<(), BackendError> {
        if self.binding == ChannelBinding::Require {
            tracing::warn!(
                "the upstream server asked for {what}; upstream.channel_binding = require refuses it"
            );
            return Err(BackendError::Protocol(format!(
                "the server asked for {what}, and upstream.channel_binding is require"
            )));
        }
        Ok(())
    }
}

pub async fn authenticate(
    conn: &mut ServerConn,
    username: &str,
    password: &SecretString,
    policy: &AuthPolicy,
) -> Result<(), BackendError> {
    let password = password.expose().as_bytes();
    let mut out = BytesMut::new();
    loop {
        match next_message(conn).await? {
            Message::AuthenticationOk => {
                policy.refuse_unbound("no authentication at all")?;
                return Ok(());
            }
            Message::AuthenticationCleartextPassword => {
                policy.refuse_unbound("a cleartext password")?;
                if !policy.verified_tls {
                    return Err(cleartext_refused());
                }
                frontend::password_message(password, &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                policy.refuse_unbound("an md5 password")?;
                if !policy.allow_md5 {
                    return Err(md5_refused());
                }
                let hash = md5_hash(username.as_bytes(), password, body.salt());
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                let (mut plain, mut plus) = (false, false);
                let mut mechs = body.mechanisms();
                while let Some(m) = mechs.next()? {
                    plain |= m == SCRAM_SHA_256;
                    plus |= m == SCRAM_SHA_256_PLUS;
                }
                let (mechanism, binding) = choose_binding(policy, plain, plus)?;
                return scram(conn, password, mechanism, binding, &mut out).await;
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

/// A server (or whatever answers in its place) asking for the password in cleartext over a
/// connection whose certificate was not verified could be anyone: the password is not sent.
fn cleartext_refused() -> BackendError {
    tracing::error!(
        "the upstream server asked for the password in cleartext over a connection that is not \
         verified TLS; refused, the password was not sent (set upstream.tls to verify-ca or \
         verify-full, or have the server ask for SCRAM or md5)"
    );
    BackendError::Protocol(
        "the server asked for a cleartext password without verified TLS (upstream.tls \
         verify-ca or verify-full); refused"
            .into(),
    )
}

/// md5 is off unless `upstream.allow_md5`: PostgreSQL 14+ and RDS default to SCRAM, and an md5
/// request from a server that stores SCRAM verifiers means something answers in its place.
fn md5_refused() -> BackendError {
    tracing::error!(
        "the upstream server asked for an md5 password; refused, nothing was sent (set \
         upstream.allow_md5 = true for a server whose roles still have md5 passwords, or store \
         a SCRAM verifier: SET password_encryption = 'scram-sha-256' and set the password again)"
    );
    BackendError::Protocol(
        "the server asked for an md5 password, and upstream.allow_md5 is false; refused".into(),
    )
}

/// SCRAM-SHA-256-PLUS with `tls-server-end-point` when TLS carries it and the policy allows;
/// otherwise SCRAM-SHA-256, telling the server whether the client could have bound ("y") or
/// not ("n"), so a stripped PLUS offer is noticed by a server that supports it.
fn choose_binding(
    policy: &AuthPolicy,
    plain: bool,
    plus: bool,
) -> Result<(&'static str, Binding), BackendError> {
    match (policy.binding, &policy.end_point) {
        (ChannelBinding::Disable, _) if plain => Ok((SCRAM_SHA_256, Binding::unsupported())),
        (ChannelBinding::Prefer | ChannelBinding::Require, Some(data)) if plus => Ok((
            SCRAM_SHA_256_PLUS,
            Binding::tls_server_end_point(data.clone()),
        )),
        (ChannelBinding::Require, _) => Err(BackendError::Protocol(
            "upstream.channel_binding is require, and the server or its certificate offers no \
             SCRAM-SHA-256-PLUS"
                .into(),
        )),
        (ChannelBinding::Prefer, Some(_)) if plain => Ok((SCRAM_SHA_256, Binding::unrequested())),
        (ChannelBinding::Prefer, None) if plain => Ok((SCRAM_SHA_256, Binding::unsupported())),
        _ => Err(BackendError::Protocol(
            "the server offers no SASL mechanism rotagate supports".into(),
        )),
    }
}

async fn scram(
    conn: &mut ServerConn,
    password: &[u8],
    mechanism: &str,
    binding: Binding,
    out: &mut BytesMut,
) -> Result<(), BackendError> {
    let mut scram = ScramSha256::new(password, binding);
    frontend::sasl_initial_response(mechanism, scram.message(), out)?;
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
