//! rotagate: a PostgreSQL wire-protocol proxy. Applications log in with static credentials;
//! rotagate holds the upstream pool and the real, rotating credentials.
//!
//! - [`config`] owns the file format, environment overrides and validation; nothing else reads
//!   configuration from outside.
//! - [`frontend`] owns the client side: TLS, client authentication, sessions and the relay. It
//!   borrows upstream connections from [`pool`] and never decides which credential is used.
//! - [`backend`] owns one upstream connection: connect, TLS, startup, authentication. It knows
//!   nothing of clients or pools.
//! - [`pool`] owns upstream connections grouped by credential generation; it publishes a new
//!   generation only when told to and retires old ones as they drain.
//! - [`rotation`] owns the rotation engine, the only writer of pool generations: triggers ->
//!   fetch -> validate -> health-check -> publish -> persist -> audit; breaker and backoff.
//! - [`secrets`] owns credential types (zeroized, redacted) and the sources they come from.
//! - [`databases`] owns the served databases: one credential source, cache entry, pools,
//!   rotation engine and client route per configured database; started, added and removed
//!   there.
//! - [`admin`] owns the HTTP listener: health, readiness, metrics, status. It only reads.
//! - [`crypto`] is the bottom layer everyone may use: [`crypto::SecretString`], SCRAM
//!   verifiers, the TLS crypto provider, key parsing.
//! - [`wire`] owns the bytes of the PostgreSQL protocol that rotagate writes or scans; no I/O
//!   policy lives there.
//! - [`demo`] is `rotagate demo`: a throwaway PostgreSQL and rotations to watch.
//! - [`reload`] applies a new configuration on SIGHUP where that needs no restart.
//! - [`logline`] keeps every text log event on one line, whatever a client sent.
//! - [`app`] wires everything from a [`config::Config`] and owns the shutdown order.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod config;
pub mod crypto;
pub mod databases;
pub mod demo;
pub mod frontend;
pub mod logline;
pub mod pool;
pub mod reload;
pub mod rotation;
pub mod secrets;
pub mod wire;
