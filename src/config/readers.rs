//! `[upstream]` settings of a reader entry (design 9.3): `load_balance_hosts = "random"` over
//! the `hosts` (usually several) with a `target_session_attrs` that reads (`standby`, `prefer-standby`,
//! `read-only` or `any`) serves every matching host at once, each transaction (each session in
//! session mode) on one of them, and holds standbys within `max_replica_lag`.

use super::raw::RawUpstream;
use super::upstream::TargetSessionAttrs;
use super::validate::Check;
use std::time::Duration;

/// How a reader entry spreads its transactions and keeps its standbys fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadersConfig {
    /// `upstream.replica_check_interval` (default 1 s): how often each host's role and lag are
    /// asked.
    pub check_interval: Duration,
    /// `upstream.max_replica_lag` (default off, as design 9.3 says): a standby whose replay is
    /// further behind the primary than this leaves the rotation.
    pub max_lag: Option<Duration>,
    /// `upstream.max_replica_lag_bytes` (default off): the same bound in bytes of WAL.
    pub max_lag_bytes: Option<u64>,
}

/// The reader settings, when `load_balance_hosts = "random"`; None for a writer entry (the
/// default `load_balance_hosts = "disable"`: the first matching host in list order).
pub(super) fn readers(
    c: &mut Check,
    r: &RawUpstream,
    attrs: TargetSessionAttrs,
) -> Option<ReadersConfig> {
    let path = "upstream.load_balance_hosts";
    match r.load_balance_hosts.as_deref() {
        None | Some("disable") => {
            for (key, set) in [
                (
                    "upstream.replica_check_interval",
                    r.replica_check_interval.is_some(),
                ),
                ("upstream.max_replica_lag", r.max_replica_lag.is_some()),
                (
                    "upstream.max_replica_lag_bytes",
                    r.max_replica_lag_bytes.is_some(),
                ),
            ] {
                if set {
                    c.err(
                        key,
                        "applies to a reader entry only (load_balance_hosts = \"random\")",
                    );
                }
            }
            return None;
        }
        Some("random") => {}
        Some(_) => {
            c.err(path, "must be disable or random");
            return None;
        }
    }
    if matches!(
        attrs,
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::Primary
    ) {
        c.err(
            path,
            "random spreads reads over several hosts: it needs target_session_attrs = standby, \
             prefer-standby, read-only or any (a writer entry serves one host)",
        );
    }
    let bytes = r.max_replica_lag_bytes;
    if bytes.is_some_and(|b| b < 0) {
        c.err(
            "upstream.max_replica_lag_bytes",
            "must be zero (off) or more",
        );
    }
    Some(ReadersConfig {
        check_interval: c.duration(
            "upstream.replica_check_interval",
            r.replica_check_interval.as_ref(),
            Duration::from_secs(1),
        ),
        max_lag: c.limit("upstream.max_replica_lag", r.max_replica_lag.as_ref()),
        max_lag_bytes: bytes.filter(|b| *b > 0).map(|b| b as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use std::time::Duration;

    fn readers(lines: &str) -> Result<Option<super::ReadersConfig>, String> {
        let text = format!(
            "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n[credentials]\nsource = \"file\"\n\
             [credentials.file]\npath = \"/s.json\"\n[upstream]\ndatabase = \"app\"\n\
             hosts = [\"a:1\", \"b:2\"]\n{lines}\n"
        );
        parse(&text, [])
            .map(|c| c.databases[0].upstream.readers.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn random_over_standbys_makes_a_reader_entry_with_defaults() {
        let r = readers("target_session_attrs = \"standby\"\nload_balance_hosts = \"random\"")
            .unwrap()
            .unwrap();
        assert_eq!(r.check_interval, Duration::from_secs(1));
        assert_eq!(r.max_lag, None);
        assert_eq!(r.max_lag_bytes, None);
        let set = readers(
            "target_session_attrs = \"prefer-standby\"\nload_balance_hosts = \"random\"\n\
             replica_check_interval = \"250ms\"\nmax_replica_lag = \"0\"\n\
             max_replica_lag_bytes = 1048576",
        )
        .unwrap()
        .unwrap();
        assert_eq!(set.check_interval, Duration::from_millis(250));
        assert_eq!((set.max_lag, set.max_lag_bytes), (None, Some(1 << 20)));
        assert_eq!(readers("target_session_attrs = \"standby\"").unwrap(), None);
    }

    #[test]
    fn a_writer_or_a_lag_bound_without_random_is_refused() {
        let e = readers("load_balance_hosts = \"random\"").unwrap_err();
        assert!(e.contains("upstream.load_balance_hosts"), "{e}");
        let e =
            readers("target_session_attrs = \"standby\"\nmax_replica_lag = \"5s\"").unwrap_err();
        assert!(e.contains("upstream.max_replica_lag"), "{e}");
        let e = readers("load_balance_hosts = \"shuffle\"").unwrap_err();
        assert!(e.contains("must be disable or random"), "{e}");
    }
}
