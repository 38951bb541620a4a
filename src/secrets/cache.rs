//! The last-known-good cache: the last validated credential, encrypted with AES-256-GCM, written
//! atomically with mode 0600. A cache that does not decrypt and authenticate is an error; it is
//! never served. File layout: `RGLKG1` magic, 12-byte nonce, ciphertext (JSON) with its tag.

use super::{Credentials, SecretString};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const MAGIC: &[u8; 6] = b"RGLKG1";

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
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.expose().trim())
                .map_err(|_| CacheError::BadKey)?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CacheError::BadKey)?;
        Ok(Self(Zeroizing::new(arr)))
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
    /// Sequence number of the newest credential written; writes may run on other threads.
    written: std::sync::Mutex<u64>,
}

impl Cache {
    pub fn new(path: PathBuf, key: CacheKey) -> Self {
        Self {
            path,
            key,
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
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| CacheError::Format(self.path.display().to_string()))?;
        let werr = |e| CacheError::Write(self.path.display().to_string(), e);
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(werr)?;
        f.write_all(MAGIC)
            .and_then(|_| f.write_all(&nonce))
            .and_then(|_| f.write_all(&sealed))
            .map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, &self.path).map_err(werr)
    }

    /// Reads and decrypts the cache; `Ok(None)` when there is no cache file.
    pub fn load(&self) -> Result<Option<Credentials>, CacheError> {
        let name = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::Read(name, e)),
        };
        if bytes.len() < MAGIC.len() + 12 + 16 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(CacheError::Format(name));
        }
        let (nonce, sealed) = bytes[MAGIC.len()..].split_at(12);
        let plain = Zeroizing::new(
            self.cipher()
                .decrypt(Nonce::from_slice(nonce), sealed)
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
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key() -> CacheKey {
        let raw: [u8; 32] = rand::random();
        CacheKey::from_base64(&SecretString::new(
            base64::engine::general_purpose::STANDARD.encode(raw),
        ))
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
        let cache = Cache::new(dir.path().join("lkg.bin"), key());
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
        let cache = Cache::new(dir.path().join("lkg.bin"), key());
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
        Cache::new(path.clone(), key()).store(&creds()).unwrap();
        assert!(matches!(
            Cache::new(path.clone(), key()).load(),
            Err(CacheError::Decrypt(_))
        ));
        let k = key();
        let same = CacheKey(k.0.clone());
        Cache::new(path.clone(), k).store(&creds()).unwrap();
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, raw).unwrap();
        let e = Cache::new(path.clone(), same).load().unwrap_err();
        assert!(matches!(e, CacheError::Decrypt(_)));
        assert!(!e.to_string().contains("cache-pw-123"));
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            Cache::new(path, key()).load(),
            Err(CacheError::Format(_))
        ));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(CacheKey::from_base64(&SecretString::from("c2hvcnQ=")).is_err());
        assert!(CacheKey::from_base64(&SecretString::from("not base64!")).is_err());
        assert_eq!(format!("{:?}", key()), "CacheKey(***)");
    }
}
