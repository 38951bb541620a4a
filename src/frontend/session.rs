//! One authenticated client: finish the login with the upstream's real parameters, then serve
//! it in session mode (one upstream connection for its lifetime) or transaction mode (a
//! connection per transaction, parameters synced at each hand-over).

use super::Frontend;
use super::cancel::CancelKey;
use super::error::FrontendError;
use super::params::Expected;
use super::relay::{ClientSide, End, RelayCtx, relay};
use super::startup::Login;
use crate::backend::query;
use crate::config::PoolMode;
use crate::pool::{PoolError, Pooled};
use crate::wire::msg;
use crate::wire::scan::Scanner;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves an authenticated client until it leaves, reporting any error to it.
pub async fn serve(mut login: Login, fe: &Frontend) {
    if login.database != fe.database {
        return super::report(
            &mut login.stream,
            &FrontendError::NoDatabase(login.database),
        )
        .await;
    }
    let expected = match Expected::from_startup(&login.params) {
        Ok(e) => e,
        Err(e) => return super::report(&mut login.stream, &e).await,
    };
    let mut client = ClientSide {
        stream: login.stream,
        buf: login.rbuf,
        ready: 0,
        scan: Scanner::default(),
        expected: Expected::default(),
        fingerprint: 0,
    };
    if let Err(e) = run(&mut client, expected, fe).await {
        tracing::info!(user = %login.user, error = %e, "client session ended with an error");
        super::report(&mut client.stream, &e).await;
    }
}

async fn run(
    client: &mut ClientSide,
    mut expected: Expected,
    fe: &Frontend,
) -> Result<(), FrontendError> {
    let mut out = BytesMut::new();
    msg::auth_ok(&mut out);
    client.stream.write_all(&out).await.map_err(wire_io)?;

    let mut server = acquire(fe).await?;
    expected.fill_defaults(&server.params);
    apply(&expected, expected.fingerprint(), &mut server).await?;
    expected.settle(&server.params);
    client.fingerprint = expected.fingerprint();
    server.params.synced_to = Some(client.fingerprint);
    client.expected = expected;
    let session_pid = (fe.mode == PoolMode::Session).then_some(server.pid);
    let cancel = fe.cancels.register(session_pid);
    greet(client, &server, &cancel).await?;
    match fe.mode {
        PoolMode::Session => session_mode(client, server, &cancel, fe).await,
        PoolMode::Transaction => {
            drop(server);
            transaction_mode(client, &cancel, fe).await
        }
    }
}

fn wire_io(e: std::io::Error) -> FrontendError {
    FrontendError::Wire(e.into())
}

async fn acquire(fe: &Frontend) -> Result<Pooled, FrontendError> {
    fe.pools.acquire().await.map_err(|e| match e {
        PoolError::Timeout { waited, last } => FrontendError::PoolTimeout { waited, last },
        PoolError::Backend(e) => FrontendError::Upstream(e),
    })
}

/// Makes the upstream session match what the client expects.
async fn apply(
    expected: &Expected,
    fingerprint: u64,
    server: &mut Pooled,
) -> Result<(), FrontendError> {
    if server.params.synced_to == Some(fingerprint) {
        return Ok(());
    }
    if let Some(sql) = expected.sync_sql(&server.params) {
        if let Err(e) = query::simple(server, &sql).await {
            if server.broken {
                return Err(FrontendError::UpstreamLost);
            }
            return Err(FrontendError::Upstream(e));
        }
        expected.applied(&mut server.params);
    }
    server.params.synced_to = Some(fingerprint);
    Ok(())
}

/// ParameterStatus as the upstream spells it, our BackendKeyData, ReadyForQuery.
async fn greet(
    client: &mut ClientSide,
    server: &Pooled,
    cancel: &CancelKey,
) -> Result<(), FrontendError> {
    let mut out = BytesMut::new();
    for (name, value) in &server.params.reported {
        msg::parameter_status(&mut out, name, value);
    }
    msg::backend_key_data(&mut out, cancel.pid, cancel.key);
    msg::ready_for_query(&mut out, b'I');
    client.stream.write_all(&out).await.map_err(wire_io)
}

fn ctx(fe: &Frontend) -> RelayCtx<'_> {
    RelayCtx {
        mode: fe.mode,
        pools: &fe.pools,
        max_client_message: fe.listen.max_message_size,
        shutdown: &fe.shutdown,
        transactions: &fe.transactions,
    }
}

async fn session_mode(
    client: &mut ClientSide,
    mut server: Pooled,
    cancel: &CancelKey,
    fe: &Frontend,
) -> Result<(), FrontendError> {
    cancel.slot.set(Some((server.pid, server.key)));
    let end = relay(client, &mut server, &ctx(fe)).await;
    cancel.slot.set(None);
    if !server.broken {
        reset(&mut server).await;
    }
    finish(end, client).await
}

/// DISCARD ALL before a session-mode connection goes back; a failure closes it instead.
async fn reset(server: &mut Pooled) {
    match query::simple(server, "DISCARD ALL").await {
        Ok(()) => {
            server.params.synced_to = None;
            let ours: Vec<String> = server.params.set_by_us.drain().collect();
            for name in ours {
                server.params.current.remove(&name);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "DISCARD ALL failed; closing the connection");
            server.broken = true;
        }
    }
}

async fn finish(
    end: Result<End, FrontendError>,
    client: &mut ClientSide,
) -> Result<(), FrontendError> {
    match end? {
        End::Released | End::ClientGone => Ok(()),
        End::Shutdown => Err(FrontendError::Shutdown),
        End::Retired => Err(FrontendError::Retired),
        End::ServerGone(why) => {
            tracing::warn!(reason = %why, "upstream connection lost under a client");
            let _ = client.stream.flush().await;
            Err(FrontendError::UpstreamLost)
        }
    }
}

async fn transaction_mode(
    client: &mut ClientSide,
    cancel: &CancelKey,
    fe: &Frontend,
) -> Result<(), FrontendError> {
    loop {
        if !wait_for_request(client, fe).await? {
            return Ok(());
        }
        let mut server = acquire(fe).await?;
        apply(&client.expected, client.fingerprint, &mut server).await?;
        cancel.slot.set(Some((server.pid, server.key)));
        let end = relay(client, &mut server, &ctx(fe)).await;
        cancel.slot.set(None);
        drop(server);
        match end {
            Ok(End::Released) => shrink(&mut client.buf),
            other => return finish(other, client).await,
        }
    }
}

/// Waits, holding no upstream connection, until the client has sent a whole message header.
/// False when the client left; an error when shutdown came first.
async fn wait_for_request(client: &mut ClientSide, fe: &Frontend) -> Result<bool, FrontendError> {
    while client.buf.len() < crate::wire::HEADER_LEN {
        tokio::select! {
            r = client.stream.read_buf(&mut client.buf) => match r {
                Ok(0) | Err(_) => return Ok(false),
                Ok(_) => {}
            },
            _ = fe.shutdown.cancelled() => return Err(FrontendError::Shutdown),
        }
    }
    // A lone Terminate needs no upstream connection.
    Ok(client.buf[0] != b'X')
}

/// Gives back memory after a large message so idle clients stay small.
fn shrink(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 64 * 1024 {
        *buf = BytesMut::with_capacity(4096);
    }
}
