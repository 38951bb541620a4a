//! The last-known-good cache: the last validated credential of each database, encrypted with
//! AES-256-GCM, written atomically with mode 0600. A cache that does not decrypt and
//! authenticate is an error; it is never served. One file holds an entry per database
//! ([`file`]: `RGLKG3` magic, then per entry its name, a 12-byte nonce and the ciphertext
//! (JSON) with its tag); each entry's associated data binds the format version and the
//! database's name, so an entry cannot be passed off as another database's. `RGLKG2` files
//! (one entry) and `RGLKG1` files (no associated data) are still read, and replaced at the
//! next write.
//!
//! A write never follows a symlink: the temp file has a random name in the cache's own
//! directory and is created with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600; it is fsynced, renamed
//! over the cache, and the directory is fsynced.

use super::{Credentials, SecretString};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

mod file;

const MAGIC_V2: &[u8; 6] = b"RGLKG2";
const MAGIC_V1: &[u8; 6] = b"RGLKG1";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the cache key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("cannot read the cache key file {0}: {1}")]
    KeyFile(String, std::io::Error),
    #[error("cannot read the credential cache {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write the credential cache {0}: {1}")]
    Write(String, std::io::Error),
    #[error(
        "the credential cache {0} does not decrypt with this key (wrong key, or the file was altered)"
    )]
    Decrypt(String),
    #[error("the credential cache {0} is not a rotagate cache file")]
    Format(String),
}

/// A 256-bit key; zeroized on drop.
pub struct CacheKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(***)")
    }
}

impl CacheKey {
    /// From base64 text (surrounding white space ignored).
    pub fn from_base64(text: &SecretString) -> Result<Self, CacheError> {
        crate::crypto::key_from_base64(text)
            .map(Self)
            .ok_or(CacheError::BadKey)
    }

    pub fn from_file(path: &Path) -> Result<Self, CacheError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CacheError::KeyFile(path.display().to_string(), e))?;
        Self::from_base64(&SecretString::new(text))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    username: String,
    password: Zeroizing<String>,
    host: Option<String>,
    port: Option<u16>,
    dbname: Option<String>,
    version: String,
}

pub struct Cache {
    path: PathBuf,
    key: CacheKey,
    /// The database this entry is for.
    entry: String,
    /// Sequence number of the newest credential written; writes may run on other threads.
    written: std::sync::Mutex<u64>,
}

impl Cache {
    /// A cache at `path` for the credential of upstream database `entry`.
    pub fn new(path: PathBuf, key: CacheKey, entry: &str) -> Self {
        Self {
            path,
            key,
            entry: entry.to_owned(),
            written: std::sync::Mutex::new(0),
        }
    }

    /// Stores `creds` unless a credential with a higher `seq` was stored already.
    pub fn store_newer(&self, seq: u64, creds: &Credentials) -> Result<(), CacheError> {
        let mut written = self.written.lock().expect("cache lock");
        if seq <= *written {
            return Ok(());
        }
        self.store(creds)?;
        *written = seq;
        Ok(())
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.0.as_slice()))
    }

    /// Encrypts and replaces the cache file atomically (temp file with mode 0600, then rename).
    pub fn store(&self, creds: &Credentials) -> Result<(), CacheError> {
        let stored = Stored {
            username: creds.username.clone(),
            password: Zeroizing::new(creds.password.expose().to_owned()),
            host: creds.host.clone(),
            port: creds.port,
            dbname: creds.dbname.clone(),
            version: creds.version.clone(),
        };
        let plain = Zeroizing::new(serde_json::to_vec(&stored).expect("serialising plain data"));
        let nonce: [u8; 12] = rand::random();
        let aad = self.aad(b"v3");
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_slice(),
                    aad: &aad,
                },
            )
            .map_err(|_| CacheError::Format(self.path.display().to_string()))?;
        let blob = [&nonce[..], &sealed].concat();
        file::put_entry(&self.path, &self.entry, blob)
            .map_err(|e| CacheError::Write(self.path.display().to_string(), e))
    }

    /// Associated data of this entry in format `version`.
    fn aad(&self, version: &[u8]) -> Vec<u8> {
        let mut aad = b"rotagate last-known-good ".to_vec();
        aad.extend_from_slice(version);
        aad.extend_from_slice(b"\0database\0");
        aad.extend_from_slice(self.entry.as_bytes());
        aad
    }

    /// Reads and decrypts the cache; `Ok(None)` when there is no cache file.
    pub fn load(&self) -> Result<Option<Credentials>, CacheError> {
        let name = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Read(name, e)),
        };
        let (aad, blob) = match bytes.get(..file::MAGIC.len()) {
            Some(m) if m == file::MAGIC => {
                let entries =
                    file::entries(&bytes).ok_or_else(|| CacheError::Format(name.clone()))?;
                match entries.into_iter().find(|(n, _)| *n == self.entry) {
                    Some((_, blob)) => (self.aad(b"v3"), blob),
                    None => return Ok(None),
                }
            }
            Some(m) if m == MAGIC_V2 => (self.aad(b"v2"), &bytes[MAGIC_V2.len()..]),
            Some(m) if m == MAGIC_V1 => (Vec::new(), &bytes[MAGIC_V1.len()..]),
            _ => return Err(CacheError::Format(name)),
        };
        if blob.len() < 12 + 16 {
            return Err(CacheError::Format(name));
        }
        let (nonce, sealed) = blob.split_at(12);
        let payload = Payload {
            msg: sealed,
            aad: &aad,
        };
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(Nonce::from_slice(nonce), payload)
                .map_err(|_| CacheError::Decrypt(name.clone()))?,
        );
        let s: Stored = serde_json::from_slice(&plain).map_err(|_| CacheError::Format(name))?;
        Ok(Some(Credentials {
            username: s.username,
            password: SecretString::new(s.password.to_string()),
            host: s.host,
            port: s.port,
            dbname: s.dbname,
            version: s.version,
            token: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key() -> CacheKey {
        let raw: [u8; 32] = rand::random();
        CacheKey::from_base64(&SecretString::new(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            raw,
        )))
        .unwrap()
    }

    fn creds() -> Credentials {
        Credentials::from_json(
            br#"{"username":"cache_user","password":"cache-pw-123","port":5432}"#,
            "v7".into(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_with_mode_0600_and_no_clear_text() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("lkg.bin"), key(), "app");
        assert!(cache.load().unwrap().is_none());
        cache.store(&creds()).unwrap();
        let back = cache.load().unwrap().unwrap();
        assert_eq!(back, creds());
        let meta = std::fs::metadata(dir.path().join("lkg.bin")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let raw = std::fs::read(dir.path().join("lkg.bin")).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("cache-pw-123") && !text.contains("cache_user"));
    }

    #[test]
    fn an_older_write_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("lkg.bin"), key(), "app");
        let newer =
            Credentials::from_json(br#"{"username":"u","password":"new"}"#, "v2".into()).unwrap();
        cache.store_newer(2, &newer).unwrap();
        cache.store_newer(1, &creds()).unwrap();
        assert_eq!(cache.load().unwrap().unwrap().version, "v2");
    }

    #[test]
    fn wrong_key_and_tampering_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.bin");
        Cache::new(path.clone(), key(), "app")
            .store(&creds())
            .unwrap();
        assert!(matches!(
            Cache::new(path.clone(), key(), "app").load(),
            Err(CacheError::Decrypt(_))
        ));
        let k = key();
        let same = CacheKey(k.0.clone());
        Cache::new(path.clone(), k, "app").store(&creds()).unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, raw).unwrap();
        let e = Cache::new(path.clone(), same, "app").load().unwrap_err();
        assert!(matches!(e, CacheError::Decrypt(_)));
        assert!(!e.to_string().contains("cache-pw-123"));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            Cache::new(path, key(), "app").load(),
            Err(CacheError::Format(_))
        ));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(CacheKey::from_base64(&SecretString::from("c2hvcnQ=")).is_err());
        assert!(CacheKey::from_base64(&SecretString::from("not base64!")).is_err());
        assert_eq!(format!("{:?}", key()), "CacheKey(***)");
    }

    #[test]
    fn the_entry_is_bound_to_its_database_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.bin");
        let k = key();
        let same = || CacheKey(k.0.clone());
        Cache::new(path.clone(), same(), "app")
            .store(&creds())
            .unwrap();
        assert!(
            Cache::new(path.clone(), same(), "other")
                .load()
                .unwrap()
                .is_none()
        );
        // app's sealed entry filed under another database's name does not decrypt...
        let raw = std::fs::read(&path).unwrap();
        let blob = file::entries(&raw).unwrap()[0].1.to_vec();
        let renamed = [
            &file::MAGIC[..],
            &5u16.to_be_bytes(),
            b"other",
            &(blob.len() as u32).to_be_bytes(),
            &blob,
        ]
        .concat();
        std::fs::write(&path, renamed).unwrap();
        assert!(matches!(
            Cache::new(path.clone(), same(), "other").load(),
            Err(CacheError::Decrypt(_))
        ));
        // ...nor relabelled as an older format (other associated data, or none).
        for magic in [MAGIC_V2, MAGIC_V1] {
            std::fs::write(&path, [&magic[..], &blob].concat()).unwrap();
            assert!(Cache::new(path.clone(), same(), "app").load().is_err());
        }
        // A v1 file, as earlier releases wrote it, is read.
        let nonce = [7u8; 12];
        let plain = serde_json::to_vec(&serde_json::json!({"username": "u", "password": "p",
            "host": null, "port": null, "dbname": null, "version": "v1"}))
        .unwrap();
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(k.0.as_slice()));
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .unwrap();
        let v1 = [&MAGIC_V1[..], &nonce, &sealed].concat();
        std::fs::write(&path, v1).unwrap();
        let back = Cache::new(path, same(), "app").load().unwrap().unwrap();
        assert_eq!(back.version, "v1");
    }

    #[test]
    fn one_file_holds_every_database_and_a_write_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.bin");
        let k = key();
        let cache = |db: &str| Cache::new(path.clone(), CacheKey(k.0.clone()), db);
        // An older single-entry file is replaced at the first write.
        std::fs::write(&path, [&MAGIC_V2[..], &[0u8; 40]].concat()).unwrap();
        let mut c = creds();
        for db in ["db_a", "db_b", "db_c"] {
            c.version = format!("{db}-v1");
            cache(db).store(&c).unwrap();
        }
        c.version = "db_b-v2".into();
        cache("db_b").store(&c).unwrap();
        for (db, version) in [
            ("db_a", "db_a-v1"),
            ("db_b", "db_b-v2"),
            ("db_c", "db_c-v1"),
        ] {
            assert_eq!(cache(db).load().unwrap().unwrap().version, version);
        }
        assert!(cache("db_d").load().unwrap().is_none());
        let raw = std::fs::read(&path).unwrap();
        assert_eq!(file::entries(&raw).unwrap().len(), 3);
        // Tampering with one entry (the last one: db_b, rewritten last) breaks that one only.
        let mut bad = raw.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, bad).unwrap();
        assert!(matches!(cache("db_b").load(), Err(CacheError::Decrypt(_))));
        assert!(cache("db_a").load().unwrap().is_some());
        assert!(cache("db_c").load().unwrap().is_some());
    }

    #[test]
    fn a_write_never_follows_a_symlink_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let path = dir.path().join("lkg.bin");
        for name in ["lkg.bin.tmp", "lkg.tmp", ".lkg.bin.tmp", "lkg.bin.new"] {
            let target = outside.path().join(name);
            std::fs::write(&target, "outside").unwrap();
            std::os::unix::fs::symlink(&target, dir.path().join(name)).unwrap();
        }
        let cache = Cache::new(path.clone(), key(), "app");
        cache.store(&creds()).unwrap();
        cache.store(&creds()).unwrap();
        for entry in std::fs::read_dir(outside.path()).unwrap() {
            assert_eq!(std::fs::read(entry.unwrap().path()).unwrap(), b"outside");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && n.starts_with(".lkg.bin.") && n.len() > 20)
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A symlink planted at the cache path itself is replaced, not written through.
        let target = outside.path().join("victim");
        std::fs::write(&target, "victim").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        cache.store(&creds()).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"victim");
        assert!(cache.load().unwrap().is_some());
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        // (Root ignores a read-only mode bit, so a directory that is not there stands in for
        // one that cannot be written; the fault-injection script uses a read-only mount.)
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("missing/lkg.bin"), key(), "app");
        assert!(matches!(cache.store(&creds()), Err(CacheError::Write(..))));
    }
}
