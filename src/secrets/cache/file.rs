//! The cache file's container: `RGLKG3`, then for each database its name (u16 length, bytes)
//! and its sealed entry (u32 length, nonce and ciphertext). Entries are rewritten whole, one at
//! a time, under a lock: several databases may share one file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

pub(super) const MAGIC: &[u8; 6] = b"RGLKG3";

/// Held across read-modify-write, so two databases writing at once lose neither entry.
static WRITING: Mutex<()> = Mutex::new(());

/// The (name, sealed entry) pairs of a `RGLKG3` file; None when it is malformed.
pub(super) fn entries(bytes: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, r) = rest.split_at_checked(2)?;
        let (name, r) = r.split_at_checked(usize::from(u16::from_be_bytes([len[0], len[1]])))?;
        let (len, r) = r.split_at_checked(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (blob, r) = r.split_at_checked(len)?;
        out.push((std::str::from_utf8(name).ok()?, blob));
        rest = r;
    }
    Some(out)
}

/// Replaces (or adds) `name`'s entry, keeping the others. A file in an older format, or one
/// that does not parse, is replaced by one holding this entry only.
pub(super) fn put_entry(path: &Path, name: &str, blob: Vec<u8>) -> std::io::Result<()> {
    let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let old = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut all: Vec<(&str, &[u8])> = entries(&old).unwrap_or_default();
    all.retain(|(n, _)| *n != name);
    all.push((name, &blob));
    let mut out = MAGIC.to_vec();
    for (n, b) in all {
        let too_long = || std::io::Error::other("cache entry too large");
        out.extend_from_slice(
            &u16::try_from(n.len())
                .map_err(|_| too_long())?
                .to_be_bytes(),
        );
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(
            &u32::try_from(b.len())
                .map_err(|_| too_long())?
                .to_be_bytes(),
        );
        out.extend_from_slice(b);
    }
    replace(path, &out)
}

/// Writes `bytes` to a new temp file beside `path` and renames it over `path`: a random name,
/// created exclusively (never through a symlink or over a file planted there), mode 0600,
/// fsynced, then the rename, then the directory fsynced so the rename survives a crash.
pub(super) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}
