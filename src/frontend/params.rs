//! Session parameters a client relies on, kept true on whichever upstream connection serves it:
//! the client's startup parameters (and `options=-c name=value`), plus the reported settings it
//! was told at login. Before a connection is handed over, differences become one SET/RESET query.

use super::error::FrontendError;
use crate::backend::ServerParams;
use crate::wire::msg::{quote_ident, quote_literal};

/// Reported settings a client may change and must get back on every connection.
const SETTABLE_REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
];

/// What one client expects of its session: (lowercase name, value) pairs.
#[derive(Debug, Default, Clone)]
pub struct Expected(pub Vec<(String, String)>);

impl Expected {
    /// Identifies this exact set of values. A connection remembers the fingerprint it was last
    /// synced to, so handing it to a client with identical settings needs no comparison.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut h);
        h.finish()
    }

    /// The client's startup parameters, with `options` expanded.
    pub fn from_startup(params: &[(String, String)]) -> Result<Self, FrontendError> {
        let mut out = Vec::new();
        for (name, value) in params {
            if name == "options" {
                for (n, v) in parse_options(value)? {
                    put(&mut out, &n, v);
                }
            } else {
                put(&mut out, name, value.clone());
            }
        }
        Ok(Self(out))
    }

    /// Before the login's SETs: the settable reported parameters the client did not name get
    /// the server's login defaults (not whatever a previous client left on the connection).
    pub fn fill_defaults(&mut self, server: &ServerParams) {
        for name in SETTABLE_REPORTED {
            if !self.0.iter().any(|(n, _)| n == name) {
                if let Some(v) = server.defaults.get(*name) {
                    self.0.push(((*name).to_owned(), v.clone()));
                }
            }
        }
    }

    /// After the login's SETs ran: take the server's spelling of reported values.
    pub fn settle(&mut self, server: &ServerParams) {
        for (name, value) in &mut self.0 {
            if server.is_reported(name) {
                if let Some(v) = server.current.get(name.as_str()) {
                    value.clone_from(v);
                }
            }
        }
    }

    /// A ParameterStatus the client saw: it now expects that value.
    pub fn observe(&mut self, name: &str, value: &str) {
        let lower = name.to_ascii_lowercase();
        if SETTABLE_REPORTED.contains(&lower.as_str()) || self.0.iter().any(|(n, _)| *n == lower) {
            put(&mut self.0, &lower, value.to_owned());
        }
    }

    /// The query that makes `server` match, or None when it already does.
    pub fn sync_sql(&self, server: &ServerParams) -> Option<String> {
        let mut sql = String::new();
        for (name, value) in &self.0 {
            if server.current.get(name) != Some(value) {
                sql.push_str(&format!(
                    "SET {} = {};",
                    quote_ident(name),
                    quote_literal(value)
                ));
            }
        }
        for name in &server.set_by_us {
            if !self.0.iter().any(|(n, _)| n == name) {
                sql.push_str(&format!("RESET {};", quote_ident(name)));
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records on `server` what a successful `sync_sql` did to non-reported settings.
    pub fn applied(&self, server: &mut ServerParams) {
        let stale: Vec<String> = server
            .set_by_us
            .iter()
            .filter(|n| !self.0.iter().any(|(e, _)| e == *n))
            .cloned()
            .collect();
        for name in stale {
            server.set_by_us.remove(&name);
            server.current.remove(&name);
        }
        for (name, value) in &self.0 {
            if !server.is_reported(name) {
                server.current.insert(name.clone(), value.clone());
                server.set_by_us.insert(name.clone());
            }
        }
    }
}

fn put(list: &mut Vec<(String, String)>, name: &str, value: String) {
    let lower = name.to_ascii_lowercase();
    match list.iter_mut().find(|(n, _)| *n == lower) {
        Some(slot) => slot.1 = value,
        None => list.push((lower, value)),
    }
}

/// `-c name=value` and `--name=value` pairs from libpq's `options`; backslash escapes spaces.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, FrontendError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = match w.as_str() {
            "-c" => it.next(),
            _ => w
                .strip_prefix("--")
                .or_else(|| w.strip_prefix("-c"))
                .map(str::to_owned),
        };
        let pair = setting.as_deref().and_then(|s| s.split_once('='));
        match pair {
            Some((n, v)) => out.push((n.replace('-', "_"), v.to_owned())),
            None => {
                return Err(FrontendError::Unsupported(format!(
                    "unsupported startup option {w:?}: rotagate accepts -c name=value"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(pairs: &[(&str, &str)]) -> ServerParams {
        let mut p = ServerParams::default();
        for (n, v) in pairs {
            p.report(n, v);
        }
        p.defaults = p.current.clone();
        p
    }

    #[test]
    fn options_are_expanded() {
        let e = Expected::from_startup(&[(
            "options".into(),
            "-c search_path=a\\ b --statement-timeout=5s".into(),
        )])
        .unwrap();
        assert_eq!(
            e.0,
            vec![
                ("search_path".into(), "a b".into()),
                ("statement_timeout".into(), "5s".into())
            ]
        );
        assert!(Expected::from_startup(&[("options".into(), "-x".into())]).is_err());
    }

    #[test]
    fn sync_sets_differences_and_resets_leftovers() {
        let mut s = server(&[
            ("application_name", ""),
            ("TimeZone", "UTC"),
            ("DateStyle", "ISO, MDY"),
        ]);
        let mut a = Expected::from_startup(&[
            ("application_name".into(), "a".into()),
            ("search_path".into(), "x".into()),
        ])
        .unwrap();
        a.fill_defaults(&s);
        let sql = a.sync_sql(&s).unwrap();
        assert!(
            sql.contains("SET \"application_name\" = 'a'")
                && sql.contains("SET \"search_path\" = 'x'"),
            "{sql}"
        );
        a.applied(&mut s);
        s.report("application_name", "a");
        a.settle(&s);
        assert_eq!(a.sync_sql(&s), None);
        s.report("TimeZone", "Asia/Tokyo");
        assert_eq!(a.sync_sql(&s).as_deref(), Some("SET \"timezone\" = 'UTC';"));
        let mut b = Expected::from_startup(&[]).unwrap();
        b.fill_defaults(&s);
        let sql = b.sync_sql(&s).unwrap();
        assert!(
            sql.contains("SET \"application_name\" = ''")
                && sql.contains("SET \"timezone\" = 'UTC'")
                && sql.contains("RESET \"search_path\""),
            "{sql}"
        );
        assert!(!sql.contains("datestyle"), "{sql}");
    }
}
