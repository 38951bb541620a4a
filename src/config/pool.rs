//! Validation of `[pool]` and of each database's `[databases.pool]` over it.

use super::raw::RawPool;
use super::validate::Check;
use super::*;

/// `[pool]` (or a database's `[databases.pool]`), with `base` for every key not set.
pub(super) fn pool(c: &mut Check, r: RawPool, base: &PoolConfig) -> PoolConfig {
    let mode = mode(c, r.mode.as_deref(), base.mode);
    let size = c.range("pool.size", r.size, base.size.into(), 1, 10_000) as u32;
    let min_idle = c.range("pool.min_idle", r.min_idle, base.min_idle.into(), 0, 10_000) as u32;
    if min_idle > size {
        c.err(
            "pool.min_idle",
            format!("{min_idle} is larger than pool.size ({size})"),
        );
    }
    let on_pin = on_pin(c, r.on_pin.as_deref(), base.on_pin);
    let max_pinned = match r.max_pinned {
        Some(_) => Some(c.range("pool.max_pinned", r.max_pinned, 0, 0, size.into()) as u32),
        None => base.max_pinned.filter(|m| *m <= size),
    };
    let client_view = match r.prepared_statements_view.as_deref() {
        None => base.client_view,
        Some("upstream") => false,
        Some("client") => true,
        Some(_) => {
            c.err(
                "pool.prepared_statements_view",
                "must be one of upstream, client (the value is not shown)".to_owned(),
            );
            false
        }
    };
    PoolConfig {
        mode,
        size,
        min_idle,
        on_pin,
        max_pinned,
        client_view,
        idle_transaction_timeout: match r.idle_transaction_timeout {
            Some(v) => c.limit("pool.idle_transaction_timeout", Some(&v)),
            None => base.idle_transaction_timeout,
        },
        query_timeout: match r.query_timeout {
            Some(v) => c.limit("pool.query_timeout", Some(&v)),
            None => base.query_timeout,
        },
        max_prepared_statements: c.range(
            "pool.max_prepared_statements",
            r.max_prepared_statements,
            base.max_prepared_statements as i64,
            1,
            100_000,
        ) as usize,
        max_client_statement_bytes: c.range(
            "pool.max_client_statement_bytes",
            r.max_client_statement_bytes,
            base.max_client_statement_bytes as i64,
            1024,
            1 << 30,
        ) as usize,
        prepare_unnamed: r.prepare_unnamed.unwrap_or(base.prepare_unnamed),
        acquire_timeout: c.duration(
            "pool.acquire_timeout",
            r.acquire_timeout.as_ref(),
            base.acquire_timeout,
        ),
        idle_timeout: c.duration(
            "pool.idle_timeout",
            r.idle_timeout.as_ref(),
            base.idle_timeout,
        ),
        max_lifetime: c.duration(
            "pool.max_lifetime",
            r.max_lifetime.as_ref(),
            base.max_lifetime,
        ),
        drain_timeout: c.duration(
            "pool.drain_timeout",
            r.drain_timeout.as_ref(),
            base.drain_timeout,
        ),
    }
}

fn mode(c: &mut Check, r: Option<&str>, base: PoolMode) -> PoolMode {
    match r {
        None => base,
        Some("transaction") => PoolMode::Transaction,
        Some("session") => PoolMode::Session,
        Some(_) => {
            c.err(
                "pool.mode",
                "must be one of transaction, session (the value is not shown)".to_owned(),
            );
            PoolMode::Transaction
        }
    }
}

fn on_pin(c: &mut Check, r: Option<&str>, base: OnPin) -> OnPin {
    match r {
        None => base,
        Some("pin") => OnPin::Pin,
        Some("error") => OnPin::Error,
        Some(_) => {
            c.err(
                "pool.on_pin",
                "must be one of pin, error (the value is not shown)".to_owned(),
            );
            OnPin::Pin
        }
    }
}
