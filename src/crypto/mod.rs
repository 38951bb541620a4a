//! The bottom layer: secret strings, SCRAM verifiers, the TLS crypto provider and key parsing.
//! Configuration, both sides of the proxy and the secret sources depend on it; it depends on
//! nothing else in rotagate.

pub mod scram;
mod secret;

pub use secret::SecretString;

use std::sync::Arc;
use zeroize::Zeroizing;

/// The ring provider: the only crypto backend rotagate builds with.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A 256-bit key written as base64 (`ROTAGATE_CACHE_KEY`); None when it is not one.
pub fn key_from_base64(text: &SecretString) -> Option<Zeroizing<[u8; 32]>> {
    use base64::Engine;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.expose().trim())
            .ok()?,
    );
    let key: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(Zeroizing::new(key))
}
