//! `[upstream]` (and each database's `[databases.upstream]`): the host addresses and
//! `target_session_attrs` types, and the validation of the host or hosts,
//! TLS, channel binding and which host to serve from.

use super::raw::RawUpstream;
use super::validate::Check;
use super::*;

/// One upstream address; the name is resolved again at every connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port` or `[v6-address]:port`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (host, port) = match s.strip_prefix('[') {
            Some(rest) => {
                let (host, port) = rest.split_once("]:")?;
                (host, port)
            }
            None => s.rsplit_once(':')?,
        };
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        (!host.is_empty() && !host.contains(['/', ' '])).then(|| Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// SCRAM channel binding (`tls-server-end-point`) upstream, as libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never: SCRAM-SHA-256 without binding.
    Disable,
    /// SCRAM-SHA-256-PLUS when the connection is TLS and the server offers it.
    Prefer,
    /// Only SCRAM-SHA-256-PLUS over TLS; any other login is refused.
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// `target_session_attrs`: which of the hosts rotagate serves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl TargetSessionAttrs {
    /// What a host must be, in words, for the log.
    pub fn wanted(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => "reachable",
            TargetSessionAttrs::ReadWrite => "writable",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "a primary",
            TargetSessionAttrs::Standby => "a standby",
        }
    }
}

impl UpstreamConfig {
    /// The TLS mode for `host`: `upstream.tls` when set; otherwise decided per host, as for the
    /// first: `prefer` for a loopback host, `verify-full` for any other.
    pub fn tls_for(&self, host: &str) -> UpstreamTls {
        match self.tls_explicit {
            true => self.tls,
            false if is_loopback(host) => UpstreamTls::Prefer,
            false => UpstreamTls::VerifyFull,
        }
    }
}

pub(super) fn upstream(c: &mut Check, r: Option<RawUpstream>) -> UpstreamConfig {
    let r = r.unwrap_or_else(|| {
        c.err("upstream", "the [upstream] section is required");
        RawUpstream::default()
    });
    let hosts = hosts(c, &r);
    let host = hosts.first().map(|h| h.host.clone()).unwrap_or_default();
    let loopback = is_loopback(&host);
    let tls = match r.tls.as_deref() {
        None if loopback => UpstreamTls::Prefer,
        None => UpstreamTls::VerifyFull,
        Some("disable") => UpstreamTls::Disable,
        Some("prefer") => UpstreamTls::Prefer,
        Some("require") => UpstreamTls::Require,
        Some("verify-ca") => UpstreamTls::VerifyCa,
        Some("verify-full") => UpstreamTls::VerifyFull,
        Some(_) => {
            c.err(
                "upstream.tls",
                "must be one of disable, prefer, require, verify-ca, verify-full (the value is not shown)".to_owned(),
            );
            UpstreamTls::VerifyFull
        }
    };
    if tls == UpstreamTls::VerifyCa && r.ca_file.is_none() {
        // Against the bundled public web roots, with no name check, any certificate a public
        // CA signed for any name would pass.
        c.err(
            "upstream.ca_file",
            "is required with upstream.tls = \"verify-ca\": name the CA that signs the server's \
             certificate (for RDS, its global bundle), or use verify-full",
        );
    }
    let target_session_attrs = session_attrs(c, r.target_session_attrs.as_deref(), hosts.len());
    let readers = super::readers::readers(c, &r, target_session_attrs);
    UpstreamConfig {
        port: hosts.first().map_or(5432, |h| h.port),
        target_session_attrs,
        writer_check_interval: c.duration(
            "upstream.writer_check_interval",
            r.writer_check_interval.as_ref(),
            Duration::from_secs(5),
        ),
        rds_cluster_id: rds_id(c, "upstream.rds_cluster_id", r.rds_cluster_id),
        rds_instance_id: rds_id(c, "upstream.rds_instance_id", r.rds_instance_id),
        database: c
            .required("upstream.database", r.database.as_ref())
            .to_owned(),
        tls,
        ca_file: r.ca_file.map(PathBuf::from),
        connect_timeout: c.duration(
            "upstream.connect_timeout",
            r.connect_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        channel_binding: channel_binding(c, r.channel_binding.as_deref(), tls),
        allow_md5: r.allow_md5.unwrap_or(false),
        parity_query: parity_query(c, r.parity_query),
        readers,
        tls_explicit: r.tls.is_some(),
        host,
        hosts,
    }
}

fn channel_binding(c: &mut Check, v: Option<&str>, tls: UpstreamTls) -> ChannelBinding {
    let binding = match v {
        None | Some("prefer") => ChannelBinding::Prefer,
        Some("disable") => ChannelBinding::Disable,
        Some("require") => ChannelBinding::Require,
        Some(_) => {
            c.err(
                "upstream.channel_binding",
                "must be one of disable, prefer, require (the value is not shown)",
            );
            ChannelBinding::Prefer
        }
    };
    if binding == ChannelBinding::Require && matches!(tls, UpstreamTls::Disable) {
        c.err(
            "upstream.channel_binding",
            "require needs TLS: set upstream.tls to require, verify-ca or verify-full",
        );
    }
    binding
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host` (with `port`), or `hosts = ["host:port", ...]`; one of them.
fn hosts(c: &mut Check, r: &RawUpstream) -> Vec<HostPort> {
    let port = c.range("upstream.port", r.port, 5432, 1, 65535) as u16;
    match (&r.host, &r.hosts) {
        (Some(_), Some(_)) => {
            c.err(
                "upstream.hosts",
                "set either host (with port) or hosts, not both",
            );
            Vec::new()
        }
        (Some(h), None) if !h.trim().is_empty() => vec![HostPort {
            host: h.trim().to_owned(),
            port,
        }],
        (None, Some(list)) if !list.is_empty() => {
            if r.port.is_some() {
                c.err(
                    "upstream.port",
                    "give each host's port in hosts (\"host:port\")",
                );
            }
            let mut out = Vec::new();
            for (i, entry) in list.iter().enumerate() {
                match HostPort::parse(entry) {
                    Some(h) if !out.contains(&h) => out.push(h),
                    Some(_) => c.err(&format!("upstream.hosts[{i}]"), "repeats an earlier host"),
                    None => c.err(
                        &format!("upstream.hosts[{i}]"),
                        "must be \"host:port\" (or \"[v6-address]:port\")",
                    ),
                }
            }
            out
        }
        (None, Some(_)) => {
            c.err("upstream.hosts", "needs at least one host");
            Vec::new()
        }
        _ => {
            c.err("upstream.host", "is required (or hosts)");
            Vec::new()
        }
    }
}

/// An RDS identifier: 1-63 letters, digits and hyphens.
fn rds_id(c: &mut Check, path: &str, v: Option<String>) -> Option<String> {
    let v = v?;
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-');
    if !ok {
        c.err(
            path,
            "must be an RDS identifier (letters, digits and hyphens)",
        );
    }
    Some(v)
}

fn session_attrs(c: &mut Check, v: Option<&str>, hosts: usize) -> TargetSessionAttrs {
    match v {
        None if hosts > 1 => TargetSessionAttrs::ReadWrite,
        None | Some("any") => TargetSessionAttrs::Any,
        Some("read-write") => TargetSessionAttrs::ReadWrite,
        Some("read-only") => TargetSessionAttrs::ReadOnly,
        Some("primary") => TargetSessionAttrs::Primary,
        Some("standby") => TargetSessionAttrs::Standby,
        Some("prefer-standby") => TargetSessionAttrs::PreferStandby,
        Some(_) => {
            c.err(
                "upstream.target_session_attrs",
                "must be one of any, read-write, read-only, primary, standby, prefer-standby",
            );
            TargetSessionAttrs::Any
        }
    }
}

/// `upstream.parity_query`: one statement, not empty, at most 4 KiB.
fn parity_query(c: &mut Check, q: Option<String>) -> Option<String> {
    let q = q?;
    let trimmed = q.trim();
    if trimmed.is_empty() || trimmed.len() > 4096 {
        c.err(
            "upstream.parity_query",
            "must be a query of at most 4096 bytes that returns one value".to_owned(),
        );
        return None;
    }
    Some(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::{TargetSessionAttrs, parse};

    const HEAD: &str = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n[credentials]\n\
                        source = \"file\"\n[credentials.file]\npath = \"/s.json\"\n";

    fn upstream(lines: &str) -> Result<super::UpstreamConfig, String> {
        let text = format!("{HEAD}[upstream]\ndatabase = \"app\"\n{lines}\n");
        parse(&text, [])
            .map(|c| c.databases[0].upstream.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn hosts_are_parsed_in_order_and_several_default_to_read_write() {
        let u = upstream("hosts = [\"standby.internal:5433\", \"[::1]:5432\", \"10.0.0.7:6432\"]")
            .unwrap();
        let shown: Vec<String> = u.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["standby.internal:5433", "[::1]:5432", "10.0.0.7:6432"]
        );
        assert_eq!((u.host.as_str(), u.port), ("standby.internal", 5433));
        assert_eq!(u.target_session_attrs, TargetSessionAttrs::ReadWrite);
        let one = upstream("host = \"db\"\nport = 6000").unwrap();
        assert_eq!(one.hosts.len(), 1);
        assert_eq!(one.target_session_attrs, TargetSessionAttrs::Any);
        let any = upstream("hosts = [\"a:1\", \"b:2\"]\ntarget_session_attrs = \"prefer-standby\"");
        assert_eq!(
            any.unwrap().target_session_attrs,
            TargetSessionAttrs::PreferStandby
        );
    }

    #[test]
    fn the_tls_default_is_decided_per_host() {
        use crate::config::UpstreamTls::*;
        let u = upstream("hosts = [\"127.0.0.1:5432\", \"db.example:5432\"]").unwrap();
        assert_eq!(u.tls_for("127.0.0.1"), Prefer);
        assert_eq!(u.tls_for("db.example"), VerifyFull);
        let set = upstream("hosts = [\"127.0.0.1:5432\", \"db.example:5432\"]\ntls = \"require\"")
            .unwrap();
        assert_eq!(
            (set.tls_for("127.0.0.1"), set.tls_for("db.example")),
            (Require, Require)
        );
    }

    #[test]
    fn verify_ca_needs_a_ca_file() {
        let e = upstream("host = \"db.example\"\ntls = \"verify-ca\"").unwrap_err();
        assert!(
            e.contains("upstream.ca_file") && e.contains("verify-ca"),
            "{e}"
        );
        assert!(
            upstream("host = \"db.example\"\ntls = \"verify-ca\"\nca_file = \"/ca.pem\"").is_ok()
        );
        assert!(upstream("host = \"db.example\"\ntls = \"verify-full\"").is_ok());
    }

    #[test]
    fn each_database_has_its_own_hosts_and_rds_ids_need_a_queue() {
        let text = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n\
            [[databases]]\nname = \"orders\"\n[databases.upstream]\n\
            hosts = [\"a:5432\", \"b:5432\"]\ndatabase = \"orders\"\n\
            [databases.credentials]\nsource = \"file\"\n[databases.credentials.file]\npath = \"/s\"\n\
            [[databases]]\nname = \"users\"\n[databases.upstream]\nhost = \"c\"\n\
            database = \"users\"\nrds_cluster_id = \"users-cluster\"\n\
            [databases.credentials]\nsource = \"file\"\n[databases.credentials.file]\npath = \"/t\"\n";
        let e = parse(text, []).unwrap_err().to_string();
        assert!(
            e.contains("databases[1].upstream.rds_cluster_id") && e.contains("queue_url"),
            "{e}"
        );
        let ok = parse(
            &text.replace("rds_cluster_id = \"users-cluster\"\n", ""),
            [],
        )
        .unwrap();
        let orders = &ok.databases[0].upstream;
        assert_eq!(orders.hosts.len(), 2);
        assert_eq!(orders.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(
            ok.databases[1].upstream.target_session_attrs,
            TargetSessionAttrs::Any
        );
    }

    #[test]
    fn host_and_hosts_together_and_bad_entries_are_errors_with_paths() {
        let e = upstream("host = \"a\"\nhosts = [\"b:1\"]").unwrap_err();
        assert!(
            e.contains("upstream.hosts") && e.contains("not both"),
            "{e}"
        );
        let e = upstream("hosts = [\"a:1\", \"no-port\", \"a:1\"]").unwrap_err();
        assert!(
            e.contains("upstream.hosts[1]") && e.contains("upstream.hosts[2]"),
            "{e}"
        );
        assert!(upstream("hosts = []").unwrap_err().contains("at least one"));
        let e = upstream("hosts = [\"a:1\"]\ntarget_session_attrs = \"writer\"").unwrap_err();
        assert!(e.contains("upstream.target_session_attrs"), "{e}");
        assert!(upstream("").unwrap_err().contains("upstream.host"));
    }
}
