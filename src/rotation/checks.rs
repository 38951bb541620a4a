//! The checks a candidate credential passes before it is published: the endpoint it names,
//! and a real login with `SELECT 1`.

use crate::backend::{self, BackendError, ServerConn, UpstreamTarget, query};
use crate::config::UpstreamConfig;
use crate::secrets::Credentials;
use std::sync::Arc;

/// A secret may name the endpoint; it must be the configured one unless allowed.
pub(crate) fn check_endpoint(
    c: &Credentials,
    up: &UpstreamConfig,
    allow: bool,
) -> Result<(), String> {
    if allow {
        return Ok(());
    }
    // With several hosts, the secret may name any of them (RDS names the instance it made
    // the secret for).
    let named = |h: &crate::config::HostPort| {
        c.host
            .as_ref()
            .is_none_or(|s| s.eq_ignore_ascii_case(&h.host))
            && c.port.is_none_or(|p| p == h.port)
    };
    if !up.hosts.iter().any(named) {
        let shown: Vec<String> = up.hosts.iter().map(ToString::to_string).collect();
        return Err(format!(
            "the secret's host and port ({}:{}) are not one of upstream.hosts [{}] (allow_endpoint_change = false)",
            c.host.as_deref().unwrap_or("*"),
            c.port.map_or("*".to_owned(), |p| p.to_string()),
            shown.join(", ")
        ));
    }
    if let Some(db) = &c.dbname {
        if *db != up.database {
            return Err(format!(
                "the secret's dbname {db:?} is not upstream.database {:?} (allow_endpoint_change = false)",
                up.database
            ));
        }
    }
    Ok(())
}

/// Logs in the way clients' connections will, and runs `SELECT 1`.
pub(crate) async fn health_check(
    target: &UpstreamTarget,
    creds: &Credentials,
    generation: u64,
    database: &Arc<str>,
) -> Result<ServerConn, BackendError> {
    let mut conn = backend::connect(target, creds, generation)
        .await
        .inspect_err(|e| {
            if e.is_auth_failure() {
                metrics::counter!("rotagate_backend_auth_failures_total", "database" => database.to_string())
                    .increment(1);
            }
        })?;
    tokio::time::timeout(target.connect_timeout, query::simple(&mut conn, "SELECT 1"))
        .await
        .map_err(|_| BackendError::Timeout(target.connect_timeout))??;
    conn.prepared.count_for(database);
    conn.database = database.clone();
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn up() -> UpstreamConfig {
        UpstreamConfig {
            host: "db.example.com".into(),
            port: 5432,
            database: "app".into(),
            tls: crate::config::UpstreamTls::Disable,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            channel_binding: crate::config::ChannelBinding::Prefer,
            allow_md5: false,
            parity_query: None,
            readers: None,
            tls_explicit: true,
            hosts: vec![crate::config::HostPort {
                host: "db.example.com".into(),
                port: 5432,
            }],
            target_session_attrs: crate::config::TargetSessionAttrs::Any,
            writer_check_interval: Duration::from_secs(2),
            rds_cluster_id: None,
            rds_instance_id: None,
        }
    }

    fn creds(json: &str) -> Credentials {
        Credentials::from_json(json.as_bytes(), "v".into()).unwrap()
    }

    #[test]
    fn endpoint_must_match_unless_allowed() {
        assert!(check_endpoint(&creds(r#"{"username":"u","password":"p"}"#), &up(), false).is_ok());
        let same = creds(
            r#"{"username":"u","password":"p","host":"DB.example.com","port":"5432","dbname":"app"}"#,
        );
        assert!(check_endpoint(&same, &up(), false).is_ok());
        for other in [
            r#"{"username":"u","password":"p","host":"evil.example.com"}"#,
            r#"{"username":"u","password":"p","port":6432}"#,
            r#"{"username":"u","password":"p","dbname":"other"}"#,
        ] {
            let c = creds(other);
            let e = check_endpoint(&c, &up(), false).unwrap_err();
            assert!(!e.contains('p') || !e.contains("\"p\""), "{e}");
            assert!(check_endpoint(&c, &up(), true).is_ok());
        }
    }
}
