//! `[[databases]]`: several databases behind one listener, each with its own `upstream`,
//! `pool` (over the top-level `[pool]` defaults) and `credentials`. Errors carry the entry's
//! path, as in `databases[1].credentials.aws.secret_id`.

use super::pool::pool;
use super::raw::*;
use super::upstream::upstream;
use super::validate::Check;
use super::*;

/// PostgreSQL's limit on a database name (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

pub(super) fn databases(
    c: &mut Check,
    raw: Vec<RawDatabase>,
    pool_defaults: &PoolConfig,
) -> Vec<DatabaseConfig> {
    let mut out: Vec<DatabaseConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        c.prefix = format!("databases[{i}].");
        let name = c.required("name", r.name.as_ref()).to_owned();
        if name.len() > MAX_NAME {
            c.err("name", format!("is longer than {MAX_NAME} bytes"));
        }
        if let Some(j) = out.iter().position(|d| d.name == name) {
            c.err(
                "name",
                format!("repeats database \"{name}\" (databases[{j}]): names must be distinct"),
            );
        }
        let upstream = upstream(c, r.upstream);
        let pool = pool(c, r.pool.unwrap_or_default(), pool_defaults);
        let credentials = super::credentials::credentials(c, r.credentials);
        super::credentials::check_rds_iam(c, &upstream, &credentials);
        super::credentials::check_rds_events(c, &upstream, &credentials);
        super::credentials::check_rds_events(c, &upstream, &credentials);
        out.push(DatabaseConfig {
            name,
            upstream,
            pool,
            credentials,
            origin: c.prefix.clone(),
        });
    }
    c.prefix.clear();
    one_key_per_cache_file(c, &out);
    out
}

/// Databases may share one `cache_file` (each entry sealed with its database's name), but a
/// file has one key.
fn one_key_per_cache_file(c: &mut Check, dbs: &[DatabaseConfig]) {
    for (i, d) in dbs.iter().enumerate() {
        let Some(file) = &d.credentials.cache_file else {
            continue;
        };
        let earlier = dbs[..i].iter().find(|e| {
            e.credentials.cache_file.as_ref() == Some(file)
                && e.credentials.cache_key_file != d.credentials.cache_key_file
        });
        if let Some(e) = earlier {
            c.err(
                &format!("{}credentials.cache_key_file", d.origin),
                format!(
                    "differs from {}credentials.cache_key_file while both databases use the \
                     same cache_file: one file has one key",
                    e.origin
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    fn db(name: &str, extra: &str) -> String {
        format!(
            "[[databases]]\nname = \"{name}\"\n[databases.upstream]\nhost = \"127.0.0.1\"\n\
             database = \"{name}\"\n{extra}[databases.credentials]\nsource = \"file\"\n\
             [databases.credentials.file]\npath = \"/run/secrets/{name}.json\"\n"
        )
    }

    const HEAD: &str = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n\
                        [[clients]]\nuser = \"only_a\"\npassword = \"pw\"\ndatabases = [\"a\"]\n\
                        [pool]\nsize = 8\nmode = \"session\"\n";

    #[test]
    fn each_database_gets_the_pool_defaults_and_its_own_overrides() {
        let text = format!(
            "{HEAD}{}{}",
            db("a", ""),
            db("b", "[databases.pool]\nsize = 3\n")
        );
        let c = parse(&text, []).unwrap();
        let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.databases[0].pool.size, 8);
        assert_eq!(c.databases[1].pool.size, 3);
        assert_eq!(c.databases[1].pool.mode, super::PoolMode::Session);
        assert_eq!(
            c.clients[1].databases.as_deref(),
            Some(&["a".to_owned()][..])
        );
        assert_eq!(c.clients[0].databases, None);
    }

    #[test]
    fn the_single_form_is_one_database_named_as_its_upstream_database() {
        let text = "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n[upstream]\nhost = \"h\"\n\
                    database = \"appdb\"\n[credentials]\nsource = \"file\"\n\
                    [credentials.file]\npath = \"/s.json\"\n";
        let c = parse(text, []).unwrap();
        assert_eq!(c.databases.len(), 1);
        assert_eq!(c.databases[0].name, "appdb");
        assert_eq!(c.databases[0].origin, "");
    }

    #[test]
    fn both_forms_duplicates_and_unknown_client_databases_are_errors_with_paths() {
        let both = format!(
            "{HEAD}{}[upstream]\nhost = \"h\"\ndatabase = \"x\"\n",
            db("a", "")
        );
        let e = parse(&both, []).unwrap_err().to_string();
        assert!(e.contains("databases") && e.contains("[upstream]"), "{e}");

        let twice = format!("{HEAD}{}{}", db("a", ""), db("a", ""));
        let e = parse(&twice, []).unwrap_err().to_string();
        assert!(
            e.contains("databases[1].name") && e.contains("\"a\""),
            "{e}"
        );

        let unknown = format!("{}{}", HEAD.replace("[\"a\"]", "[\"zz\"]"), db("a", ""));
        let e = parse(&unknown, []).unwrap_err().to_string();
        assert!(
            e.contains("clients[1].databases") && e.contains("zz"),
            "{e}"
        );
    }

    #[test]
    fn errors_inside_an_entry_carry_its_index() {
        let text = format!(
            "{HEAD}{}{}",
            db("a", ""),
            db("b", "").replace("source = \"file\"", "source = \"aws\"")
        );
        let e = parse(&text, []).unwrap_err().to_string();
        assert!(e.contains("databases[1].credentials.aws"), "{e}");
        let text = format!("{HEAD}{}", db("a", "port = 99999\n"));
        let e = parse(&text, []).unwrap_err().to_string();
        assert!(e.contains("databases[0].upstream.port"), "{e}");
    }

    #[test]
    fn env_overrides_reach_a_database_by_name() {
        let text = format!("{HEAD}{}{}", db("a", ""), db("db_b", ""));
        let vars = [
            (
                "ROTAGATE_DATABASES__DB_B__POOL__SIZE".to_owned(),
                "4".to_owned(),
            ),
            (
                "ROTAGATE_DATABASES__A__UPSTREAM__HOST".to_owned(),
                "a.example.com".to_owned(),
            ),
        ];
        let c = parse(&text, vars).unwrap();
        assert_eq!(c.databases[1].pool.size, 4);
        assert_eq!(c.databases[0].upstream.host, "a.example.com");
        let vars = [(
            "ROTAGATE_DATABASES__NOPE__POOL__SIZE".to_owned(),
            "4".to_owned(),
        )];
        let e = parse(&text, vars).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn one_cache_file_has_one_key() {
        let cache = "cache_file = \"/var/lib/rg/lkg\"\ncache_key_file = \"/k1\"\n";
        let a = db("a", "").replace(
            "source = \"file\"\n",
            &format!("source = \"file\"\n{cache}"),
        );
        let b = db("b", "").replace(
            "source = \"file\"\n",
            &format!("source = \"file\"\n{}", cache.replace("/k1", "/k2")),
        );
        let e = parse(&format!("{HEAD}{a}{b}"), []).unwrap_err().to_string();
        assert!(e.contains("databases[1].credentials.cache_key_file"), "{e}");
        let b = b.replace("/k2", "/k1");
        parse(&format!("{HEAD}{a}{b}"), []).unwrap();
    }
}
