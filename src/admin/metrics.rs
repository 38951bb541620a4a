//! The Prometheus recorder (one per process, installed on first use) and the descriptions of
//! every rotagate metric. Labels are bounded sets; no label ever carries a credential.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's metrics recorder once and returns a handle to render it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
                ])
                .expect("static bucket list is valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist when rotagate is embedded (tests); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            describe_transaction_mode();
            describe_limits();
            zero();
            handle
        })
        .clone()
}

/// Counters that alerts use with rate() exist from the start, at zero (the per-database ones
/// when their database starts).
fn zero() {
    metrics::gauge!("rotagate_pending_auth_connections").set(0.0);
    metrics::counter!("rotagate_pending_auth_evicted_total").increment(0);
    metrics::counter!("rotagate_admin_connections_evicted_total").increment(0);
    metrics::gauge!("rotagate_message_memory_held_bytes").set(0.0);
    metrics::counter!("rotagate_message_memory_waits_total").increment(0);
}

fn describe() {
    describe_gauge!(
        "rotagate_client_connections",
        "Client connections currently open."
    );
    describe_gauge!(
        "rotagate_server_connections",
        "Upstream connections by state (active, idle)."
    );
    describe_gauge!(
        "rotagate_credential_generation",
        "Generation number of the credential being served."
    );
    describe_counter!(
        "rotagate_transactions_total",
        "Transactions (and autocommit statements) completed through the proxy."
    );
    describe_counter!(
        "rotagate_backend_auth_failures_total",
        "Upstream logins refused with 28P01/28000."
    );
    describe_counter!(
        "rotagate_server_logins_total",
        "Upstream login attempts by result."
    );
    describe_counter!(
        "rotagate_rotations_total",
        "Rotation attempts by result: success, rejected (validation or health check failed), failed (source error)."
    );
    describe_counter!(
        "rotagate_parity_mismatches_total",
        "Candidate connections (new credential or writer) refused because upstream.parity_query gave another value than the serving side."
    );
    describe_counter!(
        "rotagate_events_total",
        "Change events by source (file, sqs, vault) and outcome (applied, ignored, invalid)."
    );
    describe_gauge!(
        "rotagate_breaker_open",
        "1 while the rotation circuit breaker is open, else 0."
    );
    describe_gauge!(
        "rotagate_credential_age_seconds",
        Unit::Seconds,
        "Seconds since the credential being served was validated."
    );
    describe_histogram!(
        "rotagate_rotation_duration_seconds",
        Unit::Seconds,
        "Duration of rotation attempts (fetch, validate, health check, publish)."
    );
    describe_counter!(
        "rotagate_server_connections_closed_total",
        "Upstream connections rotagate closed instead of returning them to the pool, by reason (malformed, too_large, client_left, server_lost, server_protocol, drain_timeout, reset_failed, pinned, placeholder, unsure, busy, client_error)."
    );
}

/// Transaction mode's series.
fn describe_transaction_mode() {
    describe_gauge!(
        "rotagate_pinned_clients",
        "Transaction-mode clients pinned to their upstream connection."
    );
    describe_counter!(
        "rotagate_pins_total",
        "Transaction-mode pins by reason (temp_table, listen, sql_prepare, with_hold, advisory_lock, other)."
    );
    describe_gauge!(
        "rotagate_prepared_statements",
        "Named statements rotagate keeps prepared on upstream connections (transaction mode)."
    );
    describe_counter!(
        "rotagate_statement_prepares_total",
        "Parses of named statements rotagate sent upstream (transaction mode)."
    );
}

/// The bounds on unauthenticated and admin connections, and the cache.
fn describe_limits() {
    describe_gauge!(
        "rotagate_pending_auth_connections",
        "Client connections not yet authenticated (bounded by listen.max_pending_auth)."
    );
    describe_counter!(
        "rotagate_pending_auth_evicted_total",
        "Unauthenticated client connections dropped for newer ones at listen.max_pending_auth."
    );
    describe_gauge!(
        "rotagate_message_memory_held_bytes",
        Unit::Bytes,
        "Bytes of large client messages held whole, granted from listen.message_memory."
    );
    describe_counter!(
        "rotagate_message_memory_waits_total",
        "Large client messages that waited for room in listen.message_memory."
    );
    describe_gauge!(
        "rotagate_admin_connections",
        "Open admin listener connections (bounded by admin.max_connections)."
    );
    describe_counter!(
        "rotagate_admin_connections_evicted_total",
        "Admin connections dropped for newer ones at admin.max_connections."
    );
    describe_counter!(
        "rotagate_cache_write_failures_total",
        "Last-known-good cache writes that failed (read-only or full directory); serving goes on."
    );
    describe_histogram!(
        "rotagate_pool_wait_seconds",
        Unit::Seconds,
        "Time spent waiting for an upstream connection."
    );
    describe_failover();
}

fn describe_failover() {
    describe_counter!(
        "rotagate_failovers_total",
        "Moves to another upstream host (a failover found by the search for the writer)."
    );
    describe_gauge!(
        "rotagate_upstream_writer",
        "1 for the upstream host being served, 0 for the other configured hosts."
    );
    describe_histogram!(
        "rotagate_failover_seconds",
        Unit::Seconds,
        "From the first sign of trouble to the new upstream host serving."
    );
}
