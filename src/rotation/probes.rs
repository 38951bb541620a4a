//! Probe sessions kept open, one per host, for the serving credential (design 9.3): the
//! reader check asks each host its role, WAL position and replay age on them every
//! `replica_check_interval`, and the writer's periodic check asks them for the role, instead of
//! a fresh login per host per interval. A session is replaced by a fresh login when it fails
//! or its host's role changed, when the credential changed, and every [`RENEW`] (so a DNS name
//! that moved is seen).

use super::lag::{self, Reading};
use super::writer::Role;
use crate::backend::{self, ServerConn, UpstreamTarget, query};
use crate::secrets::Credentials;
use std::time::Duration;
use tokio::time::Instant;

/// How long a probe session is kept before a fresh login replaces it.
pub const RENEW: Duration = Duration::from_secs(300);

/// Role, WAL position and replay age in one round trip.
const READ: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
     pg_catalog.current_setting('transaction_read_only'), \
     (CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
      ELSE pg_catalog.pg_current_wal_lsn() END)::text, \
     pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() \
      - pg_catalog.pg_last_xact_replay_timestamp()), \
     pg_catalog.pg_last_wal_receive_lsn()::text";

/// A probe session kept open on one host.
struct Session {
    conn: ServerConn,
    version: String,
    opened: Instant,
    role: Role,
}

/// The probe sessions of one database entry's hosts, by position in its host list.
#[derive(Default)]
pub struct Kept {
    sessions: Vec<Option<Session>>,
}

impl Kept {
    /// Every host's answer at once, each within `timeout` (a target that could not be built
    /// is None).
    pub async fn ask_all(
        &mut self,
        targets: &[Option<UpstreamTarget>],
        creds: &Credentials,
        timeout: Duration,
    ) -> Vec<Reading> {
        self.sessions.resize_with(targets.len(), || None);
        let asks = (targets.iter())
            .zip(self.sessions.iter_mut())
            .map(|(t, s)| ask(t.as_ref(), s, creds, timeout));
        futures::future::join_all(asks).await
    }

    /// The session on host `i`, if one is open.
    pub fn conn(&mut self, i: usize) -> Option<&mut ServerConn> {
        self.sessions.get_mut(i)?.as_mut().map(|s| &mut s.conn)
    }

    /// Closes every session (the next ask logs in afresh).
    pub fn clear(&mut self) {
        self.sessions.clear();
    }
}

/// One host's answer, on its kept session when it has a good one, else on a fresh login.
async fn ask(
    target: Option<&UpstreamTarget>,
    session: &mut Option<Session>,
    creds: &Credentials,
    timeout: Duration,
) -> Reading {
    let Some(target) = target else {
        return failed("its TLS settings could not be built".into());
    };
    let kept = session
        .take()
        .filter(|s| s.version == creds.version && s.opened.elapsed() < RENEW && !s.conn.broken);
    if let Some(mut s) = kept {
        let got = tokio::time::timeout(timeout, read(&mut s.conn)).await;
        if let Ok(Ok(r)) = got
            && r.role == Ok(s.role)
        {
            *session = Some(s);
            return r;
        }
        // An error, no answer or another role: a fresh login decides.
    }
    let fresh = async {
        let mut conn = backend::connect(target, creds, 0)
            .await
            .map_err(|e| e.to_string())?;
        let r = read(&mut conn).await?;
        Ok::<_, String>((conn, r))
    };
    match tokio::time::timeout(timeout, fresh).await {
        Err(_) => failed("did not answer in time".into()),
        Ok(Err(e)) => failed(e),
        Ok(Ok((conn, r))) => {
            if let Ok(role) = r.role {
                *session = Some(Session {
                    conn,
                    version: creds.version.clone(),
                    opened: Instant::now(),
                    role,
                });
            }
            r
        }
    }
}

fn failed(e: String) -> Reading {
    Reading {
        role: Err(e),
        lsn: None,
        replay_age: None,
        received: None,
    }
}

async fn read(conn: &mut ServerConn) -> Result<Reading, String> {
    let rows = query::rows(conn, READ).await.map_err(|e| e.to_string())?;
    let row = rows.into_iter().next().unwrap_or_default();
    let col = |i: usize| row.get(i).cloned().flatten();
    let role = match (col(0).as_deref(), col(1).as_deref()) {
        (Some("t"), _) => Role::Standby,
        (_, Some("on")) => Role::ReadOnly,
        _ => Role::Primary,
    };
    let age = col(3).and_then(|s| s.parse::<f64>().ok());
    Ok(Reading {
        role: Ok(role),
        lsn: col(2).as_deref().and_then(lag::parse_lsn),
        replay_age: age.map(|a| Duration::from_secs_f64(a.max(0.0))),
        received: col(4).as_deref().and_then(lag::parse_lsn),
    })
}
