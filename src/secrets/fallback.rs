//! Sources in order: the first (primary) serves while it can be read; when it cannot
//! (unavailable or refusing), the next one is read, and so on. Content that is not a
//! credential is not masked by a fallback: it is the primary's error. A credential from a
//! fallback carries its source in its version (`vault:3`), so `/status`, audit events and the
//! engine's comparisons tell the two apart; when the primary answers again, its credential
//! differs in version and is swapped in through the usual validation.

use super::Credentials;
use super::provider::{SecretProvider, SourceError, Stage};
use futures::future::BoxFuture;
use std::sync::Arc;

pub struct Fallback {
    sources: Vec<Arc<dyn SecretProvider>>,
}

impl Fallback {
    pub fn new(sources: Vec<Arc<dyn SecretProvider>>) -> Self {
        assert!(!sources.is_empty(), "at least one source");
        Self { sources }
    }

    async fn first_readable(&self, stage: Stage) -> Result<Credentials, SourceError> {
        let mut first_err = None;
        for (i, source) in self.sources.iter().enumerate() {
            match source.fetch(stage).await {
                Ok(mut c) => {
                    if i > 0 {
                        tracing::warn!(primary = self.sources[0].kind(), fallback = source.kind(), error = %first_err.as_ref().map(ToString::to_string).unwrap_or_default(),
                            "the primary credential source cannot be read; using a fallback");
                        c.version = format!("{}:{}", source.kind(), c.version);
                    }
                    return Ok(c);
                }
                Err(e @ SourceError::Invalid(_)) if i == 0 => return Err(e),
                Err(e) => {
                    tracing::debug!(source = source.kind(), error = %e, "credential source cannot be read");
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.expect("at least one source failed"))
    }
}

impl SecretProvider for Fallback {
    fn kind(&self) -> &'static str {
        self.sources[0].kind()
    }

    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(self.first_readable(stage))
    }

    /// The primary's, when it can tell; otherwise a fetch decides (and may fall back).
    fn current_version(&self) -> BoxFuture<'_, Result<Option<String>, SourceError>> {
        Box::pin(async { Ok(self.sources[0].current_version().await.unwrap_or(None)) })
    }

    /// Routed by the version's prefix: a fallback's credential carries its source's name.
    fn retire(&self, version: &str) -> BoxFuture<'_, ()> {
        let version = version.to_owned();
        Box::pin(async move {
            let fallback = self.sources[1..].iter().find_map(|s| {
                let v = version.strip_prefix(s.kind())?.strip_prefix(':')?;
                Some((s, v.to_owned()))
            });
            match fallback {
                Some((source, v)) => source.retire(&v).await,
                None => self.sources[0].retire(&version).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Fake {
        kind: &'static str,
        up: AtomicBool,
        invalid: bool,
    }

    impl SecretProvider for Fake {
        fn kind(&self) -> &'static str {
            self.kind
        }
        fn fetch(&self, _: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
            Box::pin(async move {
                if self.invalid {
                    return Err(SourceError::Invalid("not a credential".into()));
                }
                if !self.up.load(Ordering::Relaxed) {
                    return Err(SourceError::Unavailable("down".into()));
                }
                Credentials::from_json(br#"{"username":"u","password":"p"}"#, "7".into())
                    .map_err(|e| SourceError::Invalid(e.to_string()))
            })
        }
    }

    fn fake(kind: &'static str, up: bool, invalid: bool) -> Arc<Fake> {
        Arc::new(Fake {
            kind,
            up: AtomicBool::new(up),
            invalid,
        })
    }

    #[tokio::test]
    async fn the_primary_serves_until_it_cannot_then_the_next_one_does() {
        let (aws, vault) = (fake("aws", true, false), fake("vault", true, false));
        let f = Fallback::new(vec![aws.clone(), vault.clone()]);
        assert_eq!(f.fetch(Stage::Current).await.unwrap().version, "7");
        aws.up.store(false, Ordering::Relaxed);
        assert_eq!(f.fetch(Stage::Current).await.unwrap().version, "vault:7");
        vault.up.store(false, Ordering::Relaxed);
        assert!(f.fetch(Stage::Current).await.unwrap_err().is_transient());
        aws.up.store(true, Ordering::Relaxed);
        assert_eq!(f.fetch(Stage::Current).await.unwrap().version, "7");
    }

    #[tokio::test]
    async fn bad_content_in_the_primary_is_not_masked() {
        let f = Fallback::new(vec![fake("aws", true, true), fake("vault", true, false)]);
        assert!(matches!(
            f.fetch(Stage::Current).await,
            Err(SourceError::Invalid(_))
        ));
    }
}
