//! The look at the server at rest, after a transaction that may have changed the session (a
//! SET, or anything the classifier could not prove plain): one query, before the connection
//! serves another client, reads the session's settings (they become the client's, carried to
//! whichever connection serves it next) and the state that cannot be carried (temporary
//! objects, LISTEN, SQL-level prepared statements, holdable cursors, session advisory locks).
//!
//! State found pins the client to the connection, counted and logged with reason `detected`.
//! When it may not be pinned (`pool.on_pin = "error"`, or `pool.max_pinned` clients are pinned
//! already) the state exists and cannot be undone: the connection is closed, so that no other
//! client ever sees it, and the client's session ends with 0A000 naming what was found, since
//! going on without the state would lose it silently.

use super::flow::ClientState;
use super::settings::{reread_list, reread_sql};
use crate::backend::{Interner, query};
use crate::config::{OnPin, PoolConfig};
use crate::frontend::error::FrontendError;
use crate::frontend::relay::close;
use crate::pool::Pooled;

use super::classify::PinReason;

/// Reads the session back (see the module comment). A failure to read closes the connection
/// (the client keeps what it had); an error ends the client's session.
pub async fn check(
    state: &mut ClientState,
    server: &mut Pooled,
    lists: &Interner,
    cfg: &PoolConfig,
) -> Result<(), FrontendError> {
    let sql = reread_sql(state.settings.custom());
    let rows = match query::rows(server, &sql).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the session back; closing the connection");
            close(server, "reset_failed");
            return Ok(());
        }
    };
    let login = server.params.defaults.get("session_authorization").cloned();
    let found = reread_list(rows, login.as_deref());
    if let (Some(list), Some(shadowed)) = (&found.shadowed, &state.shadowed) {
        shadowed.set(list);
    }
    let session = lists.intern(found.session);
    // The search_path may now lead elsewhere than pg_catalog.
    state.recent.forget();
    state.settings.reread(&session, lists);
    server.params.session = session;
    for p in found.placeholders {
        if !server.params.placeholders.contains(&p) {
            server.params.placeholders.push(p);
        }
    }
    if found.state.is_empty() || state.pins.is_pinned() {
        return Ok(());
    }
    detected(state, server, cfg, &found.state.join(", "))
}

/// State found on a connection whose client is not pinned.
fn detected(
    state: &mut ClientState,
    server: &mut Pooled,
    cfg: &PoolConfig,
    what: &str,
) -> Result<(), FrontendError> {
    let max = cfg.max_pinned();
    let why = if cfg.on_pin == OnPin::Error {
        "pool.on_pin = \"error\"".to_owned()
    } else if state.pins.pin(PinReason::Detected, &state.who, max) {
        tracing::info!(client = %state.who, state = what, "the check after the transaction found session state: the client is pinned");
        return Ok(());
    } else {
        format!("pool.max_pinned = {max} clients are pinned already")
    };
    close(server, "detected_state");
    tracing::warn!(client = %state.who, state = what, why = %why, "the check after the transaction found session state the client may not keep; its upstream connection is closed and its session ends");
    Err(FrontendError::Unsupported(format!(
        "terminating the session: its last transaction left state on the upstream connection \
         that transaction pool mode cannot carry ({what}), and the session may not keep the \
         connection ({why}); the connection was closed, so the state is gone: use session mode \
         for such sessions"
    )))
}
