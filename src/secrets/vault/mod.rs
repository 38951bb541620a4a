//! HashiCorp Vault (or OpenBao) as a credential source.
//!
//! - [`client`]: the logged-in client (vaultrs, plus raw calls for what vaultrs lacks);
//! - [`token`]: keeps the token alive (renew-self, or a new login);
//! - [`kv`]: a KV v2 secret, polled by its metadata;
//! - [`database`]: dynamic credentials, leases renewed and re-issued before their max TTL,
//!   revoked once drained.

pub mod client;
pub mod database;
pub mod kv;
pub mod token;

use crate::config::{VaultMode, VaultSourceConfig};
use crate::secrets::provider::{EventSource, SecretProvider};
use std::sync::Arc;

/// The provider for `[credentials.vault]` and the tasks that keep its token and lease alive.
pub async fn source(
    cfg: &VaultSourceConfig,
) -> anyhow::Result<(Arc<dyn SecretProvider>, Vec<Box<dyn EventSource>>)> {
    let vault = client::Vault::connect(cfg).await?;
    let mut events: Vec<Box<dyn EventSource>> = vec![Box::new(token::TokenKeeper {
        vault: vault.clone(),
    })];
    let provider: Arc<dyn SecretProvider> = match &cfg.mode {
        VaultMode::Kv { mount, path } => Arc::new(kv::KvProvider {
            vault,
            mount: mount.clone(),
            path: path.clone(),
        }),
        VaultMode::Database { mount, role } => {
            let leases = database::Leases::new(vault, mount.clone(), role.clone());
            events.push(Box::new(database::LeaseKeeper(leases.clone())));
            Arc::new(database::DatabaseProvider(leases))
        }
    };
    Ok((provider, events))
}
