//! Starting one database: its credential source (primary and fallbacks) and events, its
//! last-known-good cache entry, its starting credential, pools and rotation engine.

use super::Database;
use crate::backend::UpstreamTarget;
use crate::config::{DatabaseConfig, SourceKind};
use crate::frontend::Route;
use crate::pool::Pools;
use crate::rotation::breaker::Breaker;
use crate::rotation::{Engine, EngineParts, Readers, RotationHandle, RotationStatus};
use crate::secrets::aws::sqs::Queues;
use crate::secrets::cache::{Cache, CacheKey};
use crate::secrets::fallback::Fallback;
use crate::secrets::provider::{EventSource, FileProvider, FileWatcher, SecretProvider, Stage};
use crate::secrets::{Credentials, aws, vault};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub(super) async fn database(
    cfg: &DatabaseConfig,
    workers: Vec<tokio::runtime::Handle>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    queues: &Arc<Queues>,
) -> anyhow::Result<Arc<Database>> {
    let name = &cfg.name;
    zero_metrics(name);
    let (provider, events) = source(cfg, queues)
        .await
        .with_context(|| format!("database {name}"))?;
    let cache = cache(cfg).with_context(|| format!("database {name}"))?;
    let creds = initial_credentials(provider.as_ref(), cache.as_ref())
        .await
        .with_context(|| format!("database {name}"))?;
    tracing::info!(database = %name, source = provider.kind(), version = %creds.version, username = %creds.username, "credential loaded");
    let status = Arc::new(RotationStatus::new(
        provider.kind(),
        creds.version.clone(),
        creds.username.clone(),
    ));
    let target = Arc::new(UpstreamTarget::from_config(&cfg.upstream)?);
    let readers = reader_targets(&target, cfg)?;
    let pools = Pools::new(name, cfg.pool.clone(), (target, readers), creds, workers);
    let pools = Arc::new(pools);
    let ready = Arc::new(AtomicBool::new(false));
    let stop = shutdown.child_token();
    let parts = EngineParts {
        database: name.clone(),
        provider,
        events,
        pools: pools.clone(),
        endpoint: cfg.upstream.clone(),
        allow_endpoint_change: cfg.credentials.allow_endpoint_change,
        refresh_interval: cfg.credentials.refresh_interval,
        breaker: Breaker::new(
            cfg.credentials.breaker_failures,
            cfg.credentials.breaker_cooldown,
        ),
        cache: cache.map(Arc::new),
        status: status.clone(),
        ready: ready.clone(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let engine = Engine::new(parts).run(rx, stop.clone(), tracker.clone());
    tracker.spawn(engine.instrument(tracing::info_span!("database", database = %name)));
    if let Some(readers) = Readers::new(name, pools.clone(), cfg.upstream.clone(), status.clone()) {
        let check = readers.run(stop.clone());
        tracker.spawn(check.instrument(tracing::info_span!("database", database = %name)));
    }
    Ok(Arc::new(Database {
        cfg: cfg.clone(),
        route: Arc::new(Route::new(pools.clone())),
        pools,
        status,
        rotation: RotationHandle::new(tx),
        ready,
        stop,
    }))
}

/// A reader entry's hosts, each with its own TLS settings (empty for a writer entry).
fn reader_targets(
    base: &UpstreamTarget,
    cfg: &DatabaseConfig,
) -> anyhow::Result<Vec<Arc<UpstreamTarget>>> {
    if cfg.upstream.readers.is_none() {
        return Ok(Vec::new());
    }
    let hosts = &cfg.upstream.hosts;
    anyhow::ensure!(
        hosts.len() <= crate::pool::spread::MAX_HOSTS,
        "database {}: a reader entry takes at most {} hosts",
        cfg.name,
        crate::pool::spread::MAX_HOSTS
    );
    hosts.iter().map(|h| Ok(Arc::new(base.at(h)?))).collect()
}

type Source = (Arc<dyn SecretProvider>, Vec<Box<dyn EventSource>>);

/// The configured credential sources (the primary, then fallbacks in order) and the events
/// that say the credential may have changed.
async fn source(cfg: &DatabaseConfig, queues: &Arc<Queues>) -> anyhow::Result<Source> {
    let mut providers = Vec::new();
    let mut events = Vec::new();
    for kind in &cfg.credentials.sources {
        let (provider, mut more) = one_source(cfg, *kind, queues).await?;
        providers.push(provider);
        events.append(&mut more);
    }
    let provider: Arc<dyn SecretProvider> = match providers.len() {
        1 => providers.remove(0),
        _ => Arc::new(Fallback::new(providers)),
    };
    Ok((provider, events))
}

async fn one_source(
    cfg: &DatabaseConfig,
    kind: SourceKind,
    queues: &Arc<Queues>,
) -> anyhow::Result<Source> {
    let c = &cfg.credentials;
    match (kind, &c.file, &c.aws, &c.vault) {
        (SourceKind::File, Some(f), _, _) => {
            let watcher = FileWatcher {
                path: f.path.clone(),
                interval: Duration::from_millis(250),
            };
            let provider = FileProvider {
                path: f.path.clone(),
            };
            Ok((Arc::new(provider), vec![Box::new(watcher)]))
        }
        (SourceKind::Aws, _, Some(a), _) => {
            let rds = aws::rds_events::RdsIds {
                cluster: cfg.upstream.rds_cluster_id.clone(),
                instance: cfg.upstream.rds_instance_id.clone(),
            };
            let (provider, listener) = aws::source(a, &cfg.name, rds, queues).await?;
            let events: Vec<Box<dyn EventSource>> = match listener {
                Some(l) => vec![Box::new(l)],
                None => {
                    tracing::info!(database = %cfg.name, every = ?c.refresh_interval, "no credentials.aws.queue_url: rotations are noticed by the periodic check only");
                    vec![]
                }
            };
            Ok((Arc::new(provider), events))
        }
        (SourceKind::Vault, _, _, Some(v)) => vault::source(v).await,
        (SourceKind::RdsIam, ..) if c.rds_iam.is_some() => {
            let iam = c.rds_iam.as_ref().context("rds_iam")?;
            let up = &cfg.upstream;
            let provider = aws::rds_iam::source(iam, &up.host, up.port).await?;
            Ok((Arc::new(provider), vec![]))
        }
        (kind, ..) => anyhow::bail!("credential source {kind:?} has no section"),
    }
}

/// This database's entry in the (possibly shared) cache file.
fn cache(cfg: &DatabaseConfig) -> anyhow::Result<Option<Cache>> {
    let c = &cfg.credentials;
    let Some(path) = &c.cache_file else {
        return Ok(None);
    };
    let key = match (&c.cache_key, &c.cache_key_file) {
        (Some(k), _) => CacheKey::from_base64(k)?,
        (None, Some(file)) => CacheKey::from_file(file)?,
        (None, None) => anyhow::bail!(
            "credentials.cache_file needs ROTAGATE_CACHE_KEY or credentials.cache_key_file"
        ),
    };
    Ok(Some(Cache::new(path.clone(), key, &cfg.name)))
}

/// The source's credential; when the source cannot be read, the last-known-good cache's. A
/// cache that does not decrypt stops the start: it is never served.
async fn initial_credentials(
    provider: &dyn SecretProvider,
    cache: Option<&Cache>,
) -> anyhow::Result<Credentials> {
    let err = match provider.fetch(Stage::Current).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let Some(cache) = cache else {
        anyhow::bail!(
            "cannot read the credential from the {} source: {err}",
            provider.kind()
        );
    };
    match cache.load()? {
        Some(c) => {
            tracing::warn!(error = %err, version = %c.version, "credential source unavailable; starting from the encrypted cache");
            Ok(c)
        }
        None => anyhow::bail!(
            "cannot read the credential from the {} source ({err}) and the cache is empty",
            provider.kind()
        ),
    }
}

/// A database's series that alerts use, at zero from its start, labelled with its name.
fn zero_metrics(name: &str) {
    let db = || name.to_owned();
    metrics::counter!("rotagate_backend_auth_failures_total", "database" => db()).increment(0);
    metrics::counter!("rotagate_transactions_total", "database" => db()).increment(0);
    for result in ["success", "rejected", "failed"] {
        metrics::counter!("rotagate_rotations_total", "result" => result, "database" => db())
            .increment(0);
    }
    metrics::gauge!("rotagate_breaker_open", "database" => db()).set(0.0);
    metrics::gauge!("rotagate_pinned_clients", "database" => db()).set(0.0);
    metrics::gauge!("rotagate_prepared_statements", "database" => db()).set(0.0);
    metrics::counter!("rotagate_statement_prepares_total", "database" => db()).increment(0);
    metrics::counter!("rotagate_cache_write_failures_total", "database" => db()).increment(0);
    metrics::counter!("rotagate_failovers_total", "database" => db()).increment(0);
}
