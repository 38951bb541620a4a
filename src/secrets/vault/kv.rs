//! A KV v2 secret holding the RDS JSON. Read with its version metadata (the KV version number
//! is the credential's version); the periodic check reads only the metadata and fetches when
//! `current_version` moved.

use super::client::{Vault, with_relogin};
use crate::secrets::Credentials;
use crate::secrets::provider::{SecretProvider, SourceError, Stage};
use futures::future::BoxFuture;
use std::sync::Arc;
use vaultrs::api::kv2::requests::ReadSecretRequest;
use vaultrs::api::kv2::responses::{ReadSecretMetadataResponse, ReadSecretResponse};
use vaultrs::error::ClientError;

pub struct KvProvider {
    pub vault: Arc<Vault>,
    pub mount: String,
    pub path: String,
}

impl KvProvider {
    async fn read_once(&self) -> Result<ReadSecretResponse, ClientError> {
        let req = ReadSecretRequest::builder()
            .mount(&self.mount)
            .path(&self.path)
            .build()
            .expect("mount and path are set");
        vaultrs::api::exec_with_result(&*self.vault.client().await, req).await
    }

    async fn metadata_once(&self) -> Result<ReadSecretMetadataResponse, ClientError> {
        vaultrs::kv2::read_metadata(&*self.vault.client().await, &self.mount, &self.path).await
    }

    async fn read(&self) -> Result<Credentials, SourceError> {
        let what = format!("KV read {}/{}", self.mount, self.path);
        let resp = with_relogin!(self.vault, &what, self.read_once())?;
        let version = resp.metadata.version.to_string();
        let bytes = zeroize::Zeroizing::new(serde_json::to_vec(&resp.data).unwrap_or_default());
        drop(resp);
        Credentials::from_json(&bytes, version.clone()).map_err(|e| {
            SourceError::Invalid(format!(
                "version {version} of {}/{}: {e}",
                self.mount, self.path
            ))
        })
    }

    async fn metadata(&self) -> Result<Option<String>, SourceError> {
        let what = format!("KV metadata {}/{}", self.mount, self.path);
        let meta = with_relogin!(self.vault, &what, self.metadata_once())?;
        Ok(Some(meta.current_version.to_string()))
    }
}

impl SecretProvider for KvProvider {
    fn kind(&self) -> &'static str {
        "vault"
    }

    /// KV has no stages: both ask for the latest version.
    fn fetch(&self, _stage: Stage) -> BoxFuture<'_, Result<Credentials, SourceError>> {
        Box::pin(self.read())
    }

    fn current_version(&self) -> BoxFuture<'_, Result<Option<String>, SourceError>> {
        Box::pin(self.metadata())
    }
}
