//! The file source: a mounted RDS-style JSON secret. Its version is a fingerprint of the
//! content (SHA-256, first 8 bytes in hex), so an unchanged file is recognisably the same.

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

/// A short, non-reversible fingerprint of the secret's bytes, safe to log.
pub fn fingerprint(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}
