//! Secret material as types: [`SecretString`] (from [`crate::crypto`]) zeroizes on drop and
//! prints `***`; [`Credentials`] is one upstream login (the RDS secret JSON) tagged with the version it came from.
//! Nothing here logs, and no type here implements `Display` or `Serialize` for a secret.

pub mod aws;
pub mod backoff;
pub mod cache;
mod credentials;
pub mod fallback;
pub mod file;
pub mod private;
pub mod provider;
pub mod vault;

pub use crate::crypto::SecretString;
pub use credentials::{Credentials, CredentialsError};
