//! Which of `upstream.hosts` to serve from, as libpq's `target_session_attrs` decides: every
//! host is tried at once (each within `connect_timeout`, with the serving credential), each is
//! classified, and the first in list order that matches is chosen.

use crate::backend::{self, UpstreamTarget, query};
use crate::config::{HostPort, TargetSessionAttrs};
use crate::secrets::Credentials;
use std::sync::Arc;
use std::time::SystemTime;

/// What one host is, as far as choosing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// A hot standby (recovery), or a primary whose sessions are read-only.
    ReadOnly,
    /// In recovery.
    Standby,
}

impl Role {
    /// In words, for the log.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "a primary (writable)",
            Role::ReadOnly => "read-only (default_transaction_read_only)",
            Role::Standby => "a standby (in recovery)",
        }
    }
}

/// One host's answer.
#[derive(Debug, Clone)]
pub struct Probe {
    pub host: HostPort,
    /// Its role, or why it could not be asked (never a credential).
    pub role: Result<Role, String>,
    /// The login was refused (28P01/28000): the credential, not the host, is the trouble.
    pub refused_login: bool,
    pub checked: SystemTime,
}

/// Logs in to every host at once and classifies each: `in_hot_standby` when the server
/// reports it (PostgreSQL 14+), else `pg_is_in_recovery()`; then `transaction_read_only`.
pub async fn probe_all(
    base: &UpstreamTarget,
    hosts: &[HostPort],
    creds: &Credentials,
) -> Vec<Probe> {
    let probes = hosts.iter().map(|h| async move {
        let (role, refused_login) = match base.at(h) {
            Ok(target) => classify(&target, creds).await,
            Err(e) => (Err(e.to_string()), false),
        };
        Probe {
            host: h.clone(),
            role,
            refused_login,
            checked: SystemTime::now(),
        }
    });
    futures::future::join_all(probes).await
}

async fn classify(target: &UpstreamTarget, creds: &Credentials) -> (Result<Role, String>, bool) {
    let mut refused = false;
    let work = async {
        let mut conn = backend::connect(target, creds, 0).await.map_err(|e| {
            refused = e.is_auth_failure();
            e.to_string()
        })?;
        let reported = conn
            .params
            .reported
            .iter()
            .find(|(k, _)| k == "in_hot_standby")
            .map(|(_, v)| v == "on");
        let standby = match reported {
            Some(s) => s,
            None => one(&mut conn, "SELECT pg_is_in_recovery()").await? == "t",
        };
        if standby {
            return Ok(Role::Standby);
        }
        let read_only = one(&mut conn, "SHOW transaction_read_only").await? == "on";
        Ok(if read_only {
            Role::ReadOnly
        } else {
            Role::Primary
        })
    };
    let role = tokio::time::timeout(target.connect_timeout * 2, work)
        .await
        .unwrap_or_else(|_| Err("did not answer in time".into()));
    (role, refused)
}

async fn one(conn: &mut backend::ServerConn, sql: &str) -> Result<String, String> {
    let rows = query::rows(conn, sql).await.map_err(|e| e.to_string())?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default())
}

/// The first host (in list order) that `attrs` accepts; `prefer-standby` falls back to any.
pub fn choose(attrs: TargetSessionAttrs, probes: &[Probe]) -> Option<&Probe> {
    let first = |want: &dyn Fn(Role) -> bool| {
        probes
            .iter()
            .find(|p| p.role.as_ref().is_ok_and(|r| want(*r)))
    };
    match attrs {
        TargetSessionAttrs::Any => first(&|_| true),
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary => {
            first(&|r| r == Role::Primary)
        }
        TargetSessionAttrs::ReadOnly => first(&|r| r != Role::Primary),
        TargetSessionAttrs::Standby => first(&|r| r == Role::Standby),
        TargetSessionAttrs::PreferStandby => {
            first(&|r| r == Role::Standby).or_else(|| first(&|_| true))
        }
    }
}

/// The target to serve from: `base` moved to the chosen host.
pub fn target_for(base: &UpstreamTarget, chosen: &Probe) -> Option<Arc<UpstreamTarget>> {
    base.at(&chosen.host).ok().map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(host: &str, role: Result<Role, &str>) -> Probe {
        Probe {
            host: HostPort::parse(host).unwrap(),
            role: role.map_err(str::to_owned),
            refused_login: false,
            checked: SystemTime::now(),
        }
    }

    #[test]
    fn the_first_matching_host_in_list_order_is_chosen() {
        use TargetSessionAttrs::*;
        let probes = [
            probe("down:5432", Err("refused")),
            probe("standby:5432", Ok(Role::Standby)),
            probe("primary:5432", Ok(Role::Primary)),
            probe("primary2:5432", Ok(Role::Primary)),
        ];
        let pick = |a| choose(a, &probes).map(|p| p.host.host.clone());
        assert_eq!(pick(ReadWrite).as_deref(), Some("primary"));
        assert_eq!(pick(Primary).as_deref(), Some("primary"));
        assert_eq!(pick(Any).as_deref(), Some("standby"));
        assert_eq!(pick(Standby).as_deref(), Some("standby"));
        assert_eq!(pick(PreferStandby).as_deref(), Some("standby"));
        assert_eq!(pick(ReadOnly).as_deref(), Some("standby"));
        let no_writer = &probes[..2];
        assert!(choose(ReadWrite, no_writer).is_none());
        let only_primary = &probes[2..3];
        assert_eq!(
            choose(PreferStandby, only_primary).map(|p| p.host.host.as_str()),
            Some("primary")
        );
        assert!(choose(Standby, only_primary).is_none());
    }
}
