//! The file source: a mounted RDS-style JSON secret. Its version is a fingerprint of the
//! content keyed with a random per-process key (HMAC-SHA-256, first 8 bytes in hex): an
//! unchanged file is recognisably the same for as long as the process runs, and the version,
//! which is logged and shown in `/status`, cannot be used to test guesses of the secret.

use super::{Credentials, CredentialsError};
use std::path::Path;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot read the secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the secret file {path} is invalid: {source}")]
    Invalid {
        path: String,
        source: CredentialsError,
    },
}

/// Reads and parses the secret file once.
pub fn read_credentials(path: &Path) -> Result<Credentials, FileSourceError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| FileSourceError::Read {
        path: path.display().to_string(),
        source,
    })?);
    let version = fingerprint(&bytes);
    Credentials::from_json(&bytes, version).map_err(|source| FileSourceError::Invalid {
        path: path.display().to_string(),
        source,
    })
}

/// A short fingerprint of the secret's bytes, safe to log: keyed, so it says nothing about
/// the secret to anyone without this process's key.
pub fn fingerprint(bytes: &[u8]) -> String {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("the system's random number generator")
    });
    let tag = ring::hmac::sign(key, bytes);
    tag.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_stable_but_not_the_secrets_hash() {
        let secret = br#"{"username":"u","password":"hunter2"}"#;
        let v = super::fingerprint(secret);
        assert_eq!(v, super::fingerprint(secret));
        assert_ne!(
            v,
            super::fingerprint(br#"{"username":"u","password":"hunter3"}"#)
        );
        let plain = ring::digest::digest(&ring::digest::SHA256, secret);
        let unkeyed: String = plain.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_ne!(v, unkeyed);
    }
}
