//! Schema parity (`upstream.parity_query`): before a new credential or a new writer is
//! published, the query's one value on the candidate connection must be the one the serving
//! side gives (for example the newest migration's version), so that a credential that reaches
//! another database, or a host that has not caught up with a migration, is not served. The
//! serving side is asked on an idle pooled connection when there is one; otherwise (the old
//! writer is gone, the pool is busy) the value it last gave stands in. With no value known yet
//! (the first credential), the candidate's is taken.

use crate::backend::{ServerConn, query};
use crate::pool::Pools;
use std::time::Duration;

/// How much of a value the log and the error show.
const SHOWN: usize = 64;

/// Ok when the candidate's value is the serving side's; the error says both, cut short.
pub(super) async fn check(
    pools: &Pools,
    candidate: &mut ServerConn,
    query: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mine = value(candidate, query, timeout)
        .await
        .map_err(|e| format!("upstream.parity_query failed on the candidate: {e}"))?;
    let theirs = match serving(pools, query, timeout).await {
        Some(v) => Some(v),
        None => pools.parity_seen.lock().expect("parity lock").clone(),
    };
    if let Some(theirs) = theirs.filter(|t| *t != mine) {
        let database = pools.database().to_string();
        metrics::counter!("rotagate_parity_mismatches_total", "database" => database.clone())
            .increment(1);
        tracing::warn!(
            database = %database,
            candidate = %short(&mine),
            serving = %short(&theirs),
            "schema parity: upstream.parity_query differs between the candidate and the serving side; not published"
        );
        return Err(format!(
            "schema parity: upstream.parity_query gave {} on the candidate and {} on the serving side",
            short(&mine),
            short(&theirs)
        ));
    }
    *pools.parity_seen.lock().expect("parity lock") = Some(mine);
    Ok(())
}

/// The serving side's value, from an idle connection of the current generation (None when
/// there is none, or it cannot answer in time: that connection is then closed).
async fn serving(pools: &Pools, query: &str, timeout: Duration) -> Option<String> {
    let mut conn = pools.try_idle()?;
    match value(&mut conn, query, timeout).await {
        Ok(v) => {
            *pools.parity_seen.lock().expect("parity lock") = Some(v.clone());
            Some(v)
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream.parity_query failed on a serving connection; its last value stands in");
            conn.broken = true;
            None
        }
    }
}

/// The query's one value (NULL and no row read as "NULL" and "no row").
async fn value(conn: &mut ServerConn, query: &str, timeout: Duration) -> Result<String, String> {
    match tokio::time::timeout(timeout, query::rows(conn, query)).await {
        Err(_) => {
            conn.broken = true;
            Err(format!("no answer within {timeout:?}"))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(rows)) => Ok(match rows.first().and_then(|r| r.first()) {
            None => "no row".to_owned(),
            Some(None) => "NULL".to_owned(),
            Some(Some(v)) => v.clone(),
        }),
    }
}

/// At most [`SHOWN`] characters of `v`.
fn short(v: &str) -> String {
    match v.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}...", &v[..at]),
        None => v.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_values_are_cut_short() {
        assert_eq!(super::short("20261207"), "20261207");
        let long = "x".repeat(100);
        assert_eq!(super::short(&long), format!("{}...", "x".repeat(64)));
    }
}
