//! Session settings a client relies on, kept true on whichever upstream connection serves it.
//!
//! A client's settings are a sorted list of every session-level setting its session has: its
//! startup parameters (and `options=-c name=value`), the reported settings it was told at login,
//! and whatever it later SET, RESET or `set_config(.., false)` itself. rotagate does not parse
//! those statements: when a transaction that may have changed settings ends, it reads them back
//! from the server ([`reread_sql`]: `pg_settings` entries whose source is the session, the role,
//! the session authorization, and the custom names the client used), so SET LOCAL, ROLLBACK,
//! RESET and DISCARD ALL need no rules of their own. An upstream connection remembers the list
//! it was last brought to; handing it to a client with another list costs one query
//! ([`sync_sql`]), and nothing when the lists are equal.

use crate::backend::{Interner, ServerConn, ServerParams, SettingList, query};
use crate::frontend::error::FrontendError;
use crate::frontend::relay::close;
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

/// Custom setting names kept per client; more and the client is pinned (see `session.rs`).
pub const MAX_CUSTOM: usize = 64;

/// What one client's session has.
#[derive(Debug, Default, Clone)]
pub struct Settings {
    pub list: SettingList,
    /// The list right after login: RESET and DISCARD ALL go back to these values.
    startup: SettingList,
    /// Custom (dotted) names the client set or reset; `pg_settings` does not list them.
    custom: Vec<String>,
}

impl Settings {
    /// The client's startup parameters, with `options` expanded.
    pub fn from_startup(params: &[(String, String)]) -> Result<Self, FrontendError> {
        let mut out = Vec::new();
        for (name, value) in params {
            if name == "options" {
                for (n, v) in parse_options(value)? {
                    out.push((n.to_ascii_lowercase(), v));
                }
            } else {
                out.push((name.to_ascii_lowercase(), value.clone()));
            }
        }
        // A later value for the same name wins, as in PostgreSQL.
        out.reverse();
        let custom = out
            .iter()
            .filter(|(n, _)| n.contains('.'))
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Self {
            list: SettingList::new(out),
            startup: SettingList::default(),
            custom,
        })
    }

    /// At login, before the SETs: reported settings the client did not name get the server's
    /// login defaults, so that a connection another client changed is brought back to them.
    pub fn fill_defaults(&mut self, server: &ServerParams) {
        let mut pairs: Vec<(String, String)> = self.list.iter().cloned().collect();
        for name in SETTABLE_REPORTED {
            if self.list.get(name).is_none() {
                if let Some(v) = server.defaults.get(*name) {
                    pairs.push(((*name).to_owned(), v.clone()));
                }
            }
        }
        self.list = SettingList::new(pairs);
    }

    /// At login, after the SETs: reported values take the server's spelling (`EUC_JP` for
    /// `eucjp`); the result is what RESET returns to.
    pub fn settle(&mut self, server: &ServerParams, lists: &Interner) {
        let pairs = self
            .list
            .iter()
            .map(|(n, v)| match server.reported_value(n) {
                Some(current) => (n.clone(), current.to_owned()),
                None => (n.clone(), v.clone()),
            })
            .collect();
        self.list = lists.intern(SettingList::new(pairs));
        self.startup = self.list.clone();
    }

    /// Notes custom names a statement used. False when the client has used too many to track.
    pub fn note_custom(&mut self, names: &[String]) -> bool {
        for name in names {
            if !self.custom.contains(name) {
                if self.custom.len() >= MAX_CUSTOM {
                    return false;
                }
                self.custom.push(name.clone());
            }
        }
        true
    }

    pub fn custom(&self) -> &[String] {
        &self.custom
    }

    /// Whether unqualified names reach pg_catalog's functions first: false when the client's
    /// `search_path` names pg_catalog after another schema.
    pub fn builtins(&self) -> bool {
        let Some(path) = self.list.get("search_path") else {
            return true;
        };
        let mut parts = path.split(',').map(|p| p.trim().trim_matches('"'));
        let first = parts.next();
        first == Some("pg_catalog") || parts.all(|p| p != "pg_catalog")
    }

    /// The settings read back from the server ([`reread_sql`]'s rows, made a list by
    /// [`reread_list`]) become the client's, plus its startup values for names that are no
    /// longer set (a RESET or DISCARD ALL returns those, as PostgreSQL does).
    pub fn reread(&mut self, session: &SettingList, lists: &Interner) {
        let mut pairs: Vec<(String, String)> = session.iter().cloned().collect();
        for (n, v) in self.startup.iter() {
            if session.get(n).is_none() {
                pairs.push((n.clone(), v.clone()));
            }
        }
        self.list = lists.intern(SettingList::new(pairs));
    }
}

/// The state a session can hold that cannot move to another connection, as one row of
/// [`reread_sql`]: its second column lists what is there (comma-separated `PinReason`
/// labels), empty when nothing is. Run at rest, so transaction-level locks and cursors are gone.
/// Every name is qualified and every operator is pg_catalog's: the session's search_path is the
/// client's.
const STATE_SQL: &str = "SELECT 'state', pg_catalog.concat_ws(',', \
     CASE WHEN pg_catalog.pg_my_temp_schema() OPERATOR(pg_catalog.<>) 0 AND ( \
       EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()) \
       OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()) \
       OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema())) \
       THEN 'temp_table' END, \
     CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_listening_channels()) THEN 'listen' END, \
     CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_prepared_statements WHERE from_sql) THEN 'sql_prepare' END, \
     CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) THEN 'with_hold' END, \
     CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_locks WHERE locktype OPERATOR(pg_catalog.=) 'advisory' \
       AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()) THEN 'advisory_lock' END), 'state'";

/// The query that reads a connection's session-level settings back, and the state that cannot
/// be carried ([`STATE_SQL`]). The third column says where a row comes from: `pg_settings`, a
/// custom name asked for by name, or the state.
pub fn reread_sql(custom: &[String]) -> String {
    let mut sql = String::from(
        "SELECT name, pg_catalog.current_setting(name), 'listed' FROM pg_catalog.pg_settings \
         WHERE source OPERATOR(pg_catalog.=) 'session' \
         UNION ALL SELECT 'role', pg_catalog.current_setting('role'), 'listed' \
         UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization'), 'listed' \
         UNION ALL ",
    );
    sql.push_str(STATE_SQL);
    sql.push_str(" UNION ALL ");
    sql.push_str(super::allowlist::SHADOW_SQL);
    if !custom.is_empty() {
        let names: Vec<String> = custom.iter().map(|n| quote_literal(n)).collect();
        sql.push_str(&format!(
            " UNION ALL SELECT n, pg_catalog.current_setting(n, true), 'custom' \
             FROM pg_catalog.unnest(ARRAY[{}]::pg_catalog.text[]) AS n",
            names.join(", ")
        ));
    }
    sql
}

/// What [`reread_sql`] found.
#[derive(Debug)]
pub struct Reread {
    pub session: SettingList,
    /// Custom names that exist only as placeholders: once made, PostgreSQL keeps them for the
    /// rest of the session (RESET and DISCARD ALL leave them, with an empty value).
    pub placeholders: Vec<String>,
    /// State that cannot be carried, by kind (the labels of `PinReason`); empty when none.
    pub state: Vec<String>,
    /// The functions that share a built-in's name, comma-separated (`allowlist::SHADOW_SQL`).
    pub shadowed: Option<String>,
}

/// [`reread_sql`]'s rows: no role means `none`; the session authorization counts only when it
/// is not the login user; a custom name that does not exist is left out.
pub fn reread_list(rows: Vec<Vec<Option<String>>>, login_user: Option<&str>) -> Reread {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut placeholders = Vec::new();
    let mut state = Vec::new();
    let mut shadowed = None;
    for row in rows {
        let mut cols = row.into_iter();
        let (Some(Some(name)), Some(Some(value)), Some(Some(from))) =
            (cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        if from == "shadow" {
            shadowed = Some(value);
            continue;
        }
        if from == "state" {
            state.extend(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        // pg_settings names some in mixed case (`DateStyle`, `TimeZone`); names are kept lower
        // case, as the startup packet's are, or every later transaction would set them again.
        let name = name.to_ascii_lowercase();
        let skip = match name.as_str() {
            "role" => value == "none",
            "session_authorization" => Some(value.as_str()) == login_user,
            _ => false,
        };
        if skip || pairs.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if from == "custom" {
            placeholders.push(name.clone());
        }
        pairs.push((name, value));
    }
    Reread {
        session: SettingList::new(pairs),
        placeholders,
        state,
        shadowed,
    }
}

/// Whether a connection with these placeholders may serve a client with these settings: a
/// client that never set a placeholder must not find it (it would read '' instead of NULL).
pub fn fits(placeholders: &[String], client: &SettingList) -> bool {
    placeholders.iter().all(|p| client.get(p).is_some())
}

fn is_identity(name: &str) -> bool {
    name == "role" || name == "session_authorization"
}

/// One query that turns a connection whose settings are `from` into one whose settings are
/// `to`, or None when they are equal. The role and session authorization are reset first and
/// set last, so every other setting is made with the login user's rights.
pub fn sync_sql(to: &SettingList, from: &SettingList) -> Option<String> {
    if to == from {
        return None;
    }
    let mut sql = String::new();
    let identity_set = from.iter().any(|(n, _)| is_identity(n));
    if identity_set {
        sql.push_str("RESET ROLE; RESET SESSION AUTHORIZATION; ");
    }
    for (name, _) in from.iter() {
        if !is_identity(name) && to.get(name).is_none() {
            sql.push_str(&format!("RESET {}; ", quote_ident(name)));
        }
    }
    let mut sets: Vec<String> = Vec::new();
    let changed = |n: &str, v: &str| from.get(n) != Some(v) || (identity_set && is_identity(n));
    let others = to.iter().filter(|(n, _)| !is_identity(n));
    let identity = ["session_authorization", "role"]
        .into_iter()
        .filter_map(|n| to.get(n).map(|v| (n, v)));
    for (name, value) in others
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(identity)
    {
        if changed(name, value) {
            sets.push(format!(
                "set_config({}, {}, false)",
                quote_literal(name),
                quote_literal(value)
            ));
        }
    }
    if !sets.is_empty() {
        sql.push_str(&format!("SELECT {}", sets.join(", ")));
    }
    Some(sql)
}

/// Brings an upstream session to the client's settings, in one query when they differ. A
/// failure closes the connection.
pub async fn apply(settings: &Settings, server: &mut ServerConn) -> Result<(), FrontendError> {
    let Some(sql) = sync_sql(&settings.list, &server.params.session) else {
        return Ok(());
    };
    if let Err(e) = query::simple(server, &sql).await {
        close(server, "reset_failed");
        return Err(if server.broken && e.code().is_none() {
            FrontendError::UpstreamLost
        } else {
            FrontendError::Upstream(e)
        });
    }
    server.params.session = settings.list.clone();
    Ok(())
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

    fn list(pairs: &[(&str, &str)]) -> SettingList {
        SettingList::new(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn options_are_expanded_and_the_last_value_wins() {
        let s = Settings::from_startup(&[
            (
                "options".into(),
                "-c search_path=a\\ b --statement-timeout=5s -c app.x=1".into(),
            ),
            ("application_name".into(), "one".into()),
            ("application_name".into(), "two".into()),
        ])
        .unwrap();
        assert_eq!(s.list.get("search_path"), Some("a b"));
        assert_eq!(s.list.get("statement_timeout"), Some("5s"));
        assert_eq!(s.list.get("application_name"), Some("two"));
        assert_eq!(s.custom(), ["app.x"]);
        assert!(Settings::from_startup(&[("options".into(), "-x".into())]).is_err());
    }

    #[test]
    fn equal_lists_need_no_query() {
        let a = list(&[("work_mem", "7MB")]);
        assert_eq!(sync_sql(&a, &a.clone()), None);
        assert_eq!(sync_sql(&list(&[]), &list(&[])), None);
    }

    #[test]
    fn sync_resets_leftovers_and_sets_differences_identity_last() {
        let from = list(&[
            ("role", "acc_role_a"),
            ("search_path", "acc_a"),
            ("work_mem", "7MB"),
        ]);
        let to = list(&[
            ("lock_timeout", "1234ms"),
            ("role", "acc_role_b"),
            ("work_mem", "7MB"),
        ]);
        let sql = sync_sql(&to, &from).unwrap();
        assert_eq!(
            sql,
            "RESET ROLE; RESET SESSION AUTHORIZATION; RESET \"search_path\"; \
             SELECT set_config('lock_timeout', '1234ms', false), \
             set_config('role', 'acc_role_b', false)"
        );
        let sql = sync_sql(&list(&[]), &list(&[("role", "r"), ("app.x", "1")])).unwrap();
        assert_eq!(
            sql,
            "RESET ROLE; RESET SESSION AUTHORIZATION; RESET \"app.x\"; "
        );
    }

    #[test]
    fn reread_keeps_session_values_and_returns_reset_ones_to_startup() {
        let mut s = Settings::from_startup(&[("application_name".into(), "psql".into())]).unwrap();
        s.settle(&ServerParams::default(), &Interner::default());
        let row = |n: &str, v: Option<&str>, from: &str| {
            vec![
                Some(n.to_owned()),
                v.map(str::to_owned),
                Some(from.to_owned()),
            ]
        };
        let rows = vec![
            row("work_mem", Some("7MB"), "listed"),
            row("role", Some("none"), "listed"),
            row("session_authorization", Some("app_owner"), "listed"),
            row("app.tenant", None, "custom"),
            row("app.user", Some(""), "custom"),
            row("work_mem", Some("7MB"), "custom"),
        ];
        let got = reread_list(rows, Some("app_owner"));
        assert_eq!(got.session, list(&[("app.user", ""), ("work_mem", "7MB")]));
        assert_eq!(got.placeholders, ["app.user"]);
        assert!(fits(&got.placeholders, &got.session));
        assert!(!fits(&got.placeholders, &list(&[("work_mem", "7MB")])));
        s.reread(&list(&[("work_mem", "7MB")]), &Interner::default());
        assert_eq!(
            s.list,
            list(&[("application_name", "psql"), ("work_mem", "7MB")])
        );
        let sql = reread_sql(&["app.tenant".into()]);
        assert!(
            sql.contains("unnest(ARRAY['app.tenant']::pg_catalog.text[])"),
            "{sql}"
        );
        let rows = vec![
            row("state", Some("temp_table,listen"), "state"),
            row("work_mem", Some("7MB"), "listed"),
        ];
        let got = reread_list(rows, None);
        assert_eq!(got.state, ["temp_table", "listen"]);
        assert_eq!(got.session, list(&[("work_mem", "7MB")]));
        assert!(
            reread_list(vec![row("state", Some(""), "state")], None)
                .state
                .is_empty()
        );
        // pg_settings' mixed-case names match the startup packet's lower-case ones, so the
        // next transaction finds nothing to set.
        let mut s = Settings::from_startup(&[("datestyle".into(), "ISO, MDY".into())]).unwrap();
        s.settle(&ServerParams::default(), &Interner::default());
        let got = reread_list(vec![row("DateStyle", Some("ISO, MDY"), "listed")], None);
        assert_eq!(got.session, list(&[("datestyle", "ISO, MDY")]));
        s.reread(&got.session, &Interner::default());
        assert_eq!(sync_sql(&s.list, &got.session), None);
    }
}
