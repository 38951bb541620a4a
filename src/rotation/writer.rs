//! Choosing which of `upstream.hosts` to serve from, for a writer entry: [`Writer`] holds the
//! hosts, what to serve from (libpq's `target_session_attrs`), the probe sessions kept for the
//! periodic check and the state of the search; it probes (through the [`Upstream`] seam, so
//! the engine's paused-time tests run it on the fake pool), classifies and chooses. Every host
//! is tried at once (each within `connect_timeout`, with the serving credential), each is
//! classified, and the first in list order that matches is chosen. The engine
//! (`failover.rs`) validates and publishes what it chose.

use super::status::Trigger;
use super::upstream::Upstream;
use crate::backend::{self, UpstreamTarget, query};
use crate::config::{HostPort, TargetSessionAttrs, UpstreamConfig};
use crate::secrets::Credentials;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

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
    /// Which server answered, for a host that accepts sessions not in recovery: its address,
    /// port and start time. The same host name may lead to another server after a failover.
    pub identity: Option<String>,
}

/// How long hosts earlier in the list that have not answered may hold up the choice once a
/// later one matches: a host that does not answer (a black hole, no RST) would otherwise hold
/// every search for `connect_timeout`.
pub const PATIENCE: Duration = Duration::from_secs(1);
/// How long the hosts after a settled choice may take to answer before the search returns.
const GRACE: Duration = Duration::from_millis(100);

/// Logs in to every host at once and classifies each: `in_hot_standby` when the server
/// reports it (PostgreSQL 14+), else `pg_is_in_recovery()`; then `transaction_read_only`.
/// Returns as soon as the choice `attrs` makes is settled: every host before the first match
/// has answered, or [`PATIENCE`] has passed since a match while earlier hosts say nothing
/// (they are passed over this time, marked as not answering).
pub async fn probe_all(
    base: &UpstreamTarget,
    hosts: &[HostPort],
    creds: &Credentials,
    attrs: TargetSessionAttrs,
) -> Vec<Probe> {
    let mut pending: FuturesUnordered<_> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| async move { (i, probe(base, h, creds).await) })
        .collect();
    let mut got: Vec<Option<Probe>> = vec![None; hosts.len()];
    let mut patience: Option<Instant> = None;
    // Once settled, the others get a moment more: their roles are for `/status`, and a login
    // cut short leaves a note in the server's log.
    let mut grace: Option<Instant> = None;
    while grace.is_none_or(|g| Instant::now() < g) {
        if grace.is_none() && settled(attrs, &got) {
            grace = Some(Instant::now() + GRACE);
            patience = grace;
        }
        if patience.is_none() && got.iter().flatten().any(|p| first_pass(attrs, p)) {
            patience = Some(Instant::now() + PATIENCE);
        }
        let deadline = async {
            match patience {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = pending.next() => match next {
                Some((i, p)) => got[i] = Some(p),
                None => break,
            },
            _ = deadline => break,
        }
    }
    let now = SystemTime::now();
    got.into_iter()
        .zip(hosts)
        .map(|(p, h)| {
            p.unwrap_or_else(|| Probe {
                host: h.clone(),
                role: Err("no answer yet when the search settled".into()),
                refused_login: false,
                checked: now,
                identity: None,
            })
        })
        .collect()
}

async fn probe(base: &UpstreamTarget, host: &HostPort, creds: &Credentials) -> Probe {
    let (role, refused_login) = match base.at(host) {
        Ok(target) => classify(&target, creds).await,
        Err(e) => (Err(e.to_string()), false),
    };
    let (role, identity) = match role {
        Ok((role, identity)) => (Ok(role), identity),
        Err(e) => (Err(e), None),
    };
    Probe {
        host: host.clone(),
        role,
        refused_login,
        checked: SystemTime::now(),
        identity,
    }
}

/// Whether later answers can no longer change the choice: every host before the first match
/// has answered (or all have).
fn settled(attrs: TargetSessionAttrs, got: &[Option<Probe>]) -> bool {
    for p in got {
        match p {
            None => return false,
            Some(p) if first_pass(attrs, p) => return true,
            Some(_) => {}
        }
    }
    true
}

/// What `attrs` takes on its first pass over the list (`prefer-standby`: a standby; its
/// fallback to any host needs every answer).
fn first_pass(attrs: TargetSessionAttrs, p: &Probe) -> bool {
    p.role.as_ref().is_ok_and(|r| wants(attrs, *r))
}

/// Whether `attrs` takes a host of role `r` (`prefer-standby`: on its first pass).
pub(crate) fn wants(attrs: TargetSessionAttrs, r: Role) -> bool {
    match attrs {
        TargetSessionAttrs::Any => true,
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary => r == Role::Primary,
        TargetSessionAttrs::ReadOnly => r != Role::Primary,
        TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => r == Role::Standby,
    }
}

/// The server's role, and for one not in recovery which server it is.
type Classified = (Role, Option<String>);

/// Whether the session may write, and which server answered.
const WRITABLE_AND_WHO: &str = "SELECT pg_catalog.current_setting('transaction_read_only'), \
     pg_catalog.concat(pg_catalog.inet_server_addr(), ':', pg_catalog.inet_server_port(), ' ', \
     pg_catalog.pg_postmaster_start_time())";

async fn classify(
    target: &UpstreamTarget,
    creds: &Credentials,
) -> (Result<Classified, String>, bool) {
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
            return Ok((Role::Standby, None));
        }
        let rows = query::rows(&mut conn, WRITABLE_AND_WHO)
            .await
            .map_err(|e| e.to_string())?;
        let row = rows.into_iter().next().unwrap_or_default();
        let read_only = row.first().cloned().flatten().as_deref() == Some("on");
        let who = row.get(1).cloned().flatten();
        Ok((
            if read_only {
                Role::ReadOnly
            } else {
                Role::Primary
            },
            who,
        ))
    };
    let role = tokio::time::timeout(target.connect_timeout * 2, work)
        .await
        .unwrap_or_else(|_| Err("did not answer in time".into()));
    (role, refused)
}

/// Which server `conn` reached (address, port, start time); None when it cannot tell.
pub async fn server_identity(conn: &mut backend::ServerConn) -> Option<String> {
    let rows = query::rows(conn, WRITABLE_AND_WHO).await.ok()?;
    rows.into_iter().next()?.get(1).cloned().flatten()
}

async fn one(conn: &mut backend::ServerConn, sql: &str) -> Result<String, String> {
    let rows = query::rows(conn, sql).await.map_err(|e| e.to_string())?;
    Ok(rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default())
}

/// Searches set off by doubt are at least this far apart: one failover makes one search.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// After a search that found no host to serve from: the first pause, doubling up to the most
/// for FAST_FOR after the trouble began (a promotion is usually seconds away), then up to
/// `writer_check_interval`.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(100);
pub(super) const RETRY_MAX: Duration = Duration::from_millis(250);
pub(super) const FAST_FOR: Duration = Duration::from_secs(30);

/// Choosing the host to serve from: the hosts and what to serve from, the probe sessions kept
/// for the periodic check, and the state of the search (found or not, when to look again).
/// It probes, classifies and chooses; the engine validates and publishes what it chose.
pub(super) struct Writer<P> {
    hosts: Vec<HostPort>,
    attrs: TargetSessionAttrs,
    /// The probe sessions the periodic check asks (`probes.rs`; the fake pool keeps none).
    kept: P,
    /// Several hosts, or a `target_session_attrs` other than `any`.
    pub enabled: bool,
    /// A host `target_session_attrs` accepts is being served.
    pub found: bool,
    /// The next search after one that found nothing, and what set the first one off.
    pub retry_at: Option<(Instant, Trigger)>,
    pub retry: Duration,
    /// The next periodic check.
    pub next_check: Option<Instant>,
    pub every: Duration,
    pub last_search: Option<Instant>,
    /// The first sign of trouble not yet resolved (for the detection-to-serving time).
    pub detected: Option<Instant>,
    pub warned: Option<Instant>,
    /// The last renewal for a read-only error.
    pub renewed: Option<Instant>,
    /// Which server the serving generation's host led to when last probed (see
    /// `Probe::identity`): a search that finds that server again publishes nothing.
    pub server: Option<String>,
}

impl<P: Default> Writer<P> {
    /// For `up`: enabled with several hosts or a `target_session_attrs` other than `any`,
    /// unless a reader entry's check chooses its hosts (`readers.rs`).
    pub fn new(up: &UpstreamConfig) -> Self {
        let (hosts, attrs) = (up.hosts.clone(), up.target_session_attrs);
        let enabled = (hosts.len() > 1 || attrs != TargetSessionAttrs::Any) && up.readers.is_none();
        Self {
            hosts,
            attrs,
            kept: P::default(),
            enabled,
            found: !enabled,
            retry_at: None,
            retry: RETRY_FIRST,
            next_check: None,
            every: up.writer_check_interval,
            last_search: None,
            detected: None,
            warned: None,
            renewed: None,
            server: None,
        }
    }
}

impl<P> Writer<P> {
    /// A sign of trouble: when the search it sets off may start (debounced). None while a
    /// retry is already scheduled (the doubt adds nothing to it).
    pub fn doubted(&mut self, now: Instant) -> Option<Instant> {
        self.detected.get_or_insert(now);
        if self.retry_at.is_some() {
            return None;
        }
        Some(self.last_search.map_or(now, |t| (t + DEBOUNCE).max(now)))
    }

    pub fn retry_deadline(&self) -> Option<Instant> {
        self.retry_at.map(|(at, _)| at)
    }

    /// Every host's answer and the one to serve from. A periodic check (`periodic`) while a
    /// host is served asks the kept probe sessions first and stops there when every host
    /// answers and the choice is still `serving` (`fresh` false); otherwise every host is
    /// probed with a fresh login, until the choice is settled.
    pub async fn look<U: Upstream<Probes = P>>(
        &mut self,
        up: &U,
        creds: &Credentials,
        periodic: bool,
    ) -> Looked {
        self.last_search = Some(Instant::now());
        let serving = up.serving();
        if periodic && self.found {
            let kept = up.recheck(&mut self.kept, &self.hosts, creds).await;
            if let Some(probes) = kept
                && choose(self.attrs, &probes).is_some_and(|p| p.host == serving)
            {
                return Looked {
                    probes,
                    chosen: Some(serving),
                    fresh: false,
                };
            }
        }
        self.retry_at = None;
        self.probe_with(up, creds).await
    }

    /// Every host probed with `creds` (fresh logins), and the one to serve from.
    pub async fn probe_with<U: Upstream>(&self, up: &U, creds: &Credentials) -> Looked {
        let probes = up.probe(&self.hosts, creds, self.attrs).await;
        let chosen = choose(self.attrs, &probes).map(|p| p.host.clone());
        Looked {
            probes,
            chosen,
            fresh: true,
        }
    }
}

/// What one look found.
pub(super) struct Looked {
    pub probes: Vec<Probe>,
    /// The host to serve from, when one matches.
    pub chosen: Option<HostPort>,
    /// Whether every host was probed with a fresh login (not only the kept sessions).
    pub fresh: bool,
}

/// The first host (in list order) that `attrs` accepts; `prefer-standby` falls back to any.
pub fn choose(attrs: TargetSessionAttrs, probes: &[Probe]) -> Option<&Probe> {
    let found = probes.iter().find(|p| first_pass(attrs, p));
    match attrs {
        TargetSessionAttrs::PreferStandby => {
            found.or_else(|| probes.iter().find(|p| p.role.is_ok()))
        }
        _ => found,
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
            identity: None,
        }
    }

    #[test]
    fn the_choice_is_settled_once_every_host_before_the_first_match_answered() {
        use TargetSessionAttrs::*;
        let (p, s) = (
            Some(probe("p:1", Ok(Role::Primary))),
            Some(probe("s:1", Ok(Role::Standby))),
        );
        assert!(
            !settled(ReadWrite, &[None, p.clone()]),
            "an earlier host may still answer"
        );
        assert!(settled(ReadWrite, &[s.clone(), p.clone()]));
        assert!(
            settled(ReadWrite, &[p.clone(), None]),
            "later hosts cannot change it"
        );
        assert!(!settled(ReadWrite, &[s.clone(), None]));
        assert!(settled(Any, &[s.clone(), None]));
        assert!(
            !settled(PreferStandby, &[p.clone(), None]),
            "a later standby would win"
        );
        assert!(settled(PreferStandby, &[p, s]));
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
