//! The client's byte stream once its startup is done: plain TCP or TLS, as pgwire negotiated it.

pub type ClientStream = pgwire::tokio::server::MaybeTls;
