//! `ROTAGATE_<SECTION>__<KEY>` overrides: `__` separates path segments, names are lowercased,
//! and the value is read as a TOML scalar when it parses as one (numbers, booleans), else as
//! a string. `ROTAGATE_CONFIG` and `ROTAGATE_CACHE_KEY` are not config keys and are skipped.
//! A `[[databases]]` entry is named by its `name`, compared without case and with `-` written
//! as `_`: `ROTAGATE_DATABASES__ORDERS__POOL__SIZE=10`.

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
    let mut segs = parents.iter();
    while let Some(seg) = segs.next() {
        if matches!(cur.get(seg.as_str()), Some(toml::Value::Array(_))) {
            let entries = cur
                .get_mut(seg.as_str())
                .and_then(toml::Value::as_array_mut)
                .ok_or_else(|| format!("{seg} is not a list"))?;
            let name = segs
                .next()
                .ok_or_else(|| format!("{seg} needs an entry's name"))?;
            cur = named_entry(entries, name)
                .ok_or_else(|| format!("no [[{seg}]] entry is named {name}"))?;
            continue;
        }
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

/// The entry whose `name` matches an environment variable's segment.
fn named_entry<'a>(entries: &'a mut [toml::Value], name: &str) -> Option<&'a mut toml::Table> {
    let spelled = |n: &str| n.to_ascii_lowercase().replace('-', "_");
    entries
        .iter_mut()
        .filter_map(toml::Value::as_table_mut)
        .find(|t| t.get("name").and_then(toml::Value::as_str).map(spelled) == Some(spelled(name)))
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
