//! Secret material as types: [`SecretString`] zeroizes on drop and prints `***`; [`Credentials`]
//! is one upstream login (the RDS secret JSON) tagged with the version it came from.
//! Nothing here logs, and no type here implements `Display` or `Serialize` for a secret.

pub mod aws;
pub mod backoff;
pub mod cache;
mod credentials;
pub mod fallback;
pub mod file;
pub mod provider;
pub mod vault;

pub use credentials::{Credentials, CredentialsError};

use std::fmt;
use zeroize::Zeroizing;

/// A string that must never be printed: `Debug` shows `***`, memory is zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The secret value, for the one place that must send it (a login, a SCRAM derivation).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretString::from("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }
}
