//! Making an upstream connection, as named steps: tcp, tls, startup, authenticate, read params.

use super::stream::Stream;
use super::{BackendError, ServerConn, auth, query};
use crate::config::{ChannelBinding, HostPort, UpstreamConfig, UpstreamTls};
use crate::secrets::Credentials;
use bytes::{BufMut, BytesMut};
use postgres_protocol::message::{backend::Message, frontend};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where and how to connect upstream; built once from config, shared by every pool generation.
#[derive(Clone)]
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub mode: UpstreamTls,
    pub channel_binding: ChannelBinding,
    pub allow_md5: bool,
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    pub connect_timeout: Duration,
    /// `upstream.parity_query` (see `rotation/parity.rs`).
    pub parity_query: Option<Arc<str>>,
    /// Each listed host's TLS mode and client config (`UpstreamConfig::tls_for`), for
    /// [`UpstreamTarget::at`].
    modes: Arc<Vec<HostTls>>,
}

/// One host's TLS mode and client config (None: `disable`).
type HostTls = (HostPort, UpstreamTls, Option<Arc<ClientConfig>>);

impl UpstreamTarget {
    pub fn from_config(cfg: &UpstreamConfig) -> Result<Self, super::tls::TlsConfigError> {
        let mut modes = Vec::with_capacity(cfg.hosts.len());
        for h in &cfg.hosts {
            let mode = cfg.tls_for(&h.host);
            modes.push((h.clone(), mode, super::tls::client_config(cfg, mode)?));
        }
        let mode = cfg.tls_for(&cfg.host);
        let tls = match super::tls::client_config(cfg, mode)? {
            Some(c) => Some((c, super::tls::server_name(&cfg.host)?)),
            None => None,
        };
        Ok(Self {
            host: cfg.host.clone(),
            port: cfg.port,
            database: cfg.database.clone(),
            mode,
            channel_binding: cfg.channel_binding,
            allow_md5: cfg.allow_md5,
            tls,
            connect_timeout: cfg.connect_timeout,
            parity_query: cfg.parity_query.as_deref().map(Into::into),
            modes: Arc::new(modes),
        })
    }

    /// The same database and timeouts on another host (a failover's candidate), with that
    /// host's TLS mode (a host not listed keeps this target's).
    pub fn at(&self, host: &HostPort) -> Result<Self, super::tls::TlsConfigError> {
        let (mode, config) = match self.modes.iter().find(|(h, _, _)| h == host) {
            Some((_, mode, config)) => (*mode, config.clone()),
            None => (self.mode, self.tls.as_ref().map(|(c, _)| c.clone())),
        };
        let tls = match config {
            Some(config) => Some((config, super::tls::server_name(&host.host)?)),
            None => None,
        };
        Ok(Self {
            host: host.host.clone(),
            port: host.port,
            mode,
            tls,
            ..self.clone()
        })
    }

    /// `host:port`, as the config spells hosts.
    pub fn address(&self) -> HostPort {
        HostPort {
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// Connects and logs in as `creds`, stamping the connection with `generation`.
pub async fn connect(
    target: &UpstreamTarget,
    creds: &Credentials,
    generation: u64,
) -> Result<ServerConn, BackendError> {
    let work = async {
        let stream = open(target).await?;
        let mut conn = ServerConn::on(stream, generation);
        startup(&mut conn, target, creds).await?;
        let policy = policy(&conn.stream, target);
        let endpoint = target.address().to_string();
        let password = creds
            .login_password(&endpoint)
            .await
            .map_err(|e| BackendError::Password(e.to_string()))?;
        auth::authenticate(&mut conn, &creds.username, &password, &policy).await?;
        read_params(&mut conn).await?;
        Ok(conn)
    };
    tokio::time::timeout(target.connect_timeout, work)
        .await
        .map_err(|_| BackendError::Timeout(target.connect_timeout))?
}

/// What the login may do over this stream: a cleartext password only over verified TLS;
/// channel binding from the server's certificate.
fn policy(stream: &Stream, target: &UpstreamTarget) -> auth::AuthPolicy {
    let end_point = match stream {
        Stream::Tls(tls) => tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| super::endpoint::server_end_point(cert)),
        Stream::Plain(_) => None,
    };
    auth::AuthPolicy {
        verified_tls: matches!(stream, Stream::Tls(_))
            && matches!(target.mode, UpstreamTls::VerifyCa | UpstreamTls::VerifyFull),
        binding: target.channel_binding,
        allow_md5: target.allow_md5,
        end_point,
    }
}

/// tcp, then tls as the mode says.
async fn open(target: &UpstreamTarget) -> Result<Stream, BackendError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    tls(tcp, target).await
}

async fn tls(mut tcp: TcpStream, target: &UpstreamTarget) -> Result<Stream, BackendError> {
    let Some((config, name)) = &target.tls else {
        return Ok(Stream::Plain(tcp));
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let answer = tcp.read_u8().await?;
    match answer {
        b'S' => {
            let tls = TlsConnector::from(config.clone())
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| BackendError::Tls(e.to_string()))?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        b'N' if target.mode == UpstreamTls::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(BackendError::Tls(format!(
            "the server does not accept TLS, and upstream.tls is {:?}",
            target.mode
        ))),
        other => Err(BackendError::Protocol(format!(
            "unexpected answer {other:#x} to SSLRequest"
        ))),
    }
}

async fn startup(
    conn: &mut ServerConn,
    target: &UpstreamTarget,
    creds: &Credentials,
) -> Result<(), BackendError> {
    let mut buf = BytesMut::new();
    let params = [
        ("user", creds.username.as_str()),
        ("database", target.database.as_str()),
    ];
    frontend::startup_message(params.iter().copied(), &mut buf)?;
    conn.stream.write_all(&buf).await?;
    Ok(())
}

/// After AuthenticationOk: ParameterStatus and BackendKeyData until ReadyForQuery.
async fn read_params(conn: &mut ServerConn) -> Result<(), BackendError> {
    loop {
        match query::next_message(conn).await? {
            Message::ParameterStatus(p) => {
                let name = p.name().map_err(BackendError::Io)?;
                let value = p.value().map_err(BackendError::Io)?;
                conn.params.report(name, value);
            }
            Message::BackendKeyData(k) => {
                conn.pid = k.process_id();
                conn.key = k.secret_key();
            }
            Message::ReadyForQuery(r) => {
                conn.tx_status = r.status();
                conn.params.defaults = conn
                    .params
                    .reported
                    .iter()
                    .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                    .collect();
                return Ok(());
            }
            Message::ErrorResponse(e) => return Err(query::server_error(&e)),
            Message::NoticeResponse(_) => {}
            _ => {
                return Err(BackendError::Protocol(
                    "unexpected message during startup".into(),
                ));
            }
        }
    }
}

/// Sends a CancelRequest for (`pid`, `key`) on a fresh connection, TLS as configured.
pub async fn cancel(target: &UpstreamTarget, pid: i32, key: i32) -> Result<(), BackendError> {
    let work = async {
        let mut stream = open(target).await?;
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u32(16);
        buf.put_u32(80_877_102);
        buf.put_i32(pid);
        buf.put_i32(key);
        stream.write_all(&buf).await?;
        stream.flush().await?;
        // The server closes the connection when done; wait for that so the cancel is sent.
        let mut sink = [0u8; 1];
        let _ = stream.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(target.connect_timeout, work)
        .await
        .map_err(|_| BackendError::Timeout(target.connect_timeout))?
}

#[cfg(test)]
mod tests {
    use super::UpstreamTarget;
    use crate::config::UpstreamTls::{Prefer, VerifyFull};

    #[test]
    fn each_host_keeps_its_own_tls_default() {
        let text = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n[credentials]\n\
                    source = \"file\"\n[credentials.file]\npath = \"/s.json\"\n[upstream]\n\
                    database = \"app\"\nhosts = [\"127.0.0.1:5432\", \"db.example:5432\"]\n";
        let cfg = crate::config::parse(text, []).unwrap();
        let u = &cfg.databases[0].upstream;
        let target = UpstreamTarget::from_config(u).unwrap();
        assert_eq!(target.mode, Prefer);
        let remote = target.at(&u.hosts[1]).unwrap();
        assert_eq!(remote.mode, VerifyFull);
        assert!(remote.tls.is_some());
        assert_eq!(remote.at(&u.hosts[0]).unwrap().mode, Prefer);
    }
}
