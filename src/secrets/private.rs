//! Files that hold a key or a token must be private, as ssh requires of its keys: rotagate
//! refuses to start when one is readable by others, or by its group (`chmod 600` it). One
//! exception: a file owned by another user that rotagate reads through its group, as
//! Kubernetes mounts a Secret for a non-root container (`fsGroup`, `defaultMode: 0440`). Checked
//! for `admin.token_file`, `credentials.cache_key_file`, and Vault's `token_file` and AppRole
//! `secret_id_file`. The cache file and the secret file the file source reads are not keys:
//! the cache is encrypted, and the secret file is mounted by the orchestrator with its own
//! modes.

use crate::config::{Config, VaultAuth};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Every key or token file the configuration names, with the key that names it.
pub fn files(cfg: &Config) -> Vec<(String, &Path)> {
    let mut out: Vec<(String, &Path)> = Vec::new();
    if let Some(p) = &cfg.admin.token_file {
        out.push(("admin.token_file".to_owned(), p));
    }
    for db in &cfg.databases {
        let c = &db.credentials;
        if let Some(p) = &c.cache_key_file {
            out.push((format!("{}credentials.cache_key_file", db.origin), p));
        }
        match c.vault.as_ref().map(|v| &v.auth) {
            Some(VaultAuth::Token { file: Some(p), .. }) => {
                out.push((format!("{}credentials.vault.token_file", db.origin), p));
            }
            Some(VaultAuth::AppRole { secret_id_file, .. }) => out.push((
                format!("{}credentials.vault.approle_secret_id_file", db.origin),
                secret_id_file,
            )),
            _ => {}
        }
    }
    out
}

/// An error naming the first key file that its group or others can read. A file that cannot
/// be read at all is left to the code that reads it (its error says so).
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    for (key, path) in files(cfg) {
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let mode = meta.permissions().mode();
        let group_needed = own_uid().is_some_and(|uid| uid != meta.uid());
        let who = if mode & 0o004 != 0 {
            "everyone"
        } else if mode & 0o040 != 0 && !group_needed {
            "its group"
        } else {
            continue;
        };
        anyhow::bail!(
            "{key} {} is readable by {who} (mode {:o}): a file holding a key or token must be \
             private; chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// This process's real user id, from `/proc/self/status`.
fn own_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("token");
        std::fs::write(&key, "t0ken").unwrap();
        let text = format!(
            "[[clients]]\nuser = \"app\"\npassword = \"pw\"\n[upstream]\nhost = \"db\"\n\
             database = \"app\"\n[credentials]\nsource = \"file\"\n[credentials.file]\n\
             path = \"/s.json\"\n[admin]\ntoken_file = \"{}\"\n",
            key.display()
        );
        let cfg = crate::config::parse(&text, []).unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let got = check(&cfg);
            assert_eq!(got.is_ok(), ok, "mode {mode:o}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("admin.token_file"), "{e}");
                assert!(!e.to_string().contains("t0ken"));
            }
        }
    }
}
