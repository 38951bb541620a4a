//! `ROTAGATE_<SECTION>__<KEY>` overrides: `__` separates path segments, names are lowercased,
//! and the value is read as a TOML scalar when it parses as one (numbers, booleans), else as
//! a string. `ROTAGATE_CONFIG` and `ROTAGATE_CACHE_KEY` are not config keys and are skipped.

use super::ConfigErrors;

const NOT_KEYS: &[&str] = &["ROTAGATE_CONFIG", "ROTAGATE_CACHE_KEY", "ROTAGATE_LOG"];

pub fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("ROTAGATE_") else {
            continue;
        };
        if NOT_KEYS.contains(&name.as_str()) || !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if let Err(msg) = set_path(table, &path, scalar(&value)) {
            errors.0.push(super::FieldError {
                path: path.join("."),
                message: format!("from {name}: {msg}"),
            });
        }
    }
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn scalar(value: &str) -> toml::Value {
    match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)),
            ) => v,
            _ => toml::Value::String(value.to_owned()),
        },
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for seg in parents {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{seg} is not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_and_scalars() {
        let mut t: toml::Table = "[upstream]\nhost = \"a\"\n".parse().unwrap();
        let vars = [
            ("ROTAGATE_UPSTREAM__HOST".to_owned(), "b".to_owned()),
            ("ROTAGATE_UPSTREAM__PORT".to_owned(), "6000".to_owned()),
            (
                "ROTAGATE_CREDENTIALS__AWS__SECRET_ID".to_owned(),
                "prod/db".to_owned(),
            ),
            ("ROTAGATE_CONFIG".to_owned(), "x.toml".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        apply_overrides(&mut t, vars).unwrap();
        assert_eq!(t["upstream"]["host"].as_str(), Some("b"));
        assert_eq!(t["upstream"]["port"].as_integer(), Some(6000));
        assert_eq!(
            t["credentials"]["aws"]["secret_id"].as_str(),
            Some("prod/db")
        );
        assert!(!t.contains_key("config"));
    }
}
