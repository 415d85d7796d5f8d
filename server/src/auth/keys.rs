//! API keys: `omx_` and 32 random base62 characters (190 bits, from `ring`'s system RNG). The keys file
//! `<data-dir>/keys.json` holds for each key its id, name, role, creation time and the SHA-256 of the secret,
//! never the secret; it is written atomically (temporary file, fsync, rename) and readable by this user only.
//! A presented key is hashed and compared with every stored hash in constant time.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Role;

/// Most keys the file may hold.
pub const KEYS_MAX: usize = 64;
/// Largest keys file read.
const KEYS_FILE_BYTES_MAX: u64 = 1 << 20;
/// What every key starts with (so leaked keys are recognisable to secret scanners).
pub const KEY_PREFIX: &str = "omx_";
/// Random characters after the prefix.
const KEY_RANDOM_CHARS: usize = 32;
/// Longest key name.
const NAME_CHARS_MAX: usize = 64;
/// Longest presented key looked at (anything longer is no key of ours).
const PRESENTED_BYTES_MAX: usize = 256;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const _: () = assert!(KEY_RANDOM_CHARS >= 22, "at least 128 bits of randomness");
const _: () = assert!(KEY_PREFIX.len() + KEY_RANDOM_CHARS <= PRESENTED_BYTES_MAX);

/// One stored key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Short random id, for `keys list` and `keys delete`; not secret.
    pub id: String,
    /// Optional label (`--name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the key may do.
    pub role: Role,
    /// Lowercase hex SHA-256 of the whole key string.
    pub sha256: String,
    /// RFC 3339 creation time.
    pub created: String,
}

#[derive(Default, Serialize, Deserialize)]
struct KeysFile {
    keys: Vec<KeyRecord>,
}

/// A key just created: the only time its secret exists outside the client.
pub struct CreatedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The key to give clients.
    pub secret: String,
}

/// A keys-file operation that failed. Messages name the file by its base name only.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Reading or writing failed.
    #[error("cannot {action} the API keys file (keys.json): {kind}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
    },
    /// The file is not what we write.
    #[error("the API keys file (keys.json) is corrupt or too large: {0}")]
    Corrupt(String),
    /// [`KEYS_MAX`] reached.
    #[error("there are already {KEYS_MAX} API keys; delete one first (`ollamamax keys delete ID`)")]
    TooMany,
    /// `keys delete` with an unknown id.
    #[error("no API key with id {0:?} (see `ollamamax keys list`)")]
    UnknownId(String),
    /// A name that is too long or has control characters.
    #[error("a key name is at most {NAME_CHARS_MAX} printable characters")]
    BadName,
    /// The system RNG failed.
    #[error("cannot draw random bytes for a key")]
    Random,
}

fn io(action: &'static str) -> impl Fn(std::io::Error) -> KeysError {
    move |error| KeysError::Io {
        action,
        kind: error.kind(),
    }
}

/// The keys file in `data_dir`.
pub fn keys_file(data_dir: &Path) -> PathBuf {
    data_dir.join("keys.json")
}

/// What identifies one version of the keys file: modification time, size, inode (a rename brings a new one).
pub type Stamp = (SystemTime, u64, u64);

/// The file's [`Stamp`], or `None` when it is missing.
pub fn stamp(file: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(file).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

/// Reads the keys (none when the file does not exist).
pub fn load(file: &Path) -> Result<Vec<KeyRecord>, KeysError> {
    match std::fs::metadata(file) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io("read")(error)),
        Ok(metadata) if metadata.len() > KEYS_FILE_BYTES_MAX => {
            return Err(KeysError::Corrupt(format!(
                "larger than {KEYS_FILE_BYTES_MAX} bytes"
            )));
        }
        Ok(_) => {}
    }
    let bytes = match std::fs::read(file) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(io("read"))?,
    };
    let parsed: KeysFile =
        serde_json::from_slice(&bytes).map_err(|error| KeysError::Corrupt(error.to_string()))?;
    if parsed.keys.len() > KEYS_MAX {
        return Err(KeysError::Corrupt(format!("more than {KEYS_MAX} keys")));
    }
    for key in &parsed.keys {
        if hex_to_hash(&key.sha256).is_none() {
            return Err(KeysError::Corrupt(format!(
                "key {:?} has no valid sha256",
                key.id
            )));
        }
    }
    Ok(parsed.keys)
}

/// Writes the keys atomically: a temporary file beside it (created 0600 by `tempfile`), fsync'd, renamed over it.
fn save(data_dir: &Path, keys: &[KeyRecord]) -> Result<(), KeysError> {
    assert!(keys.len() <= KEYS_MAX, "callers check the bound");
    std::fs::create_dir_all(data_dir).map_err(io("create the directory of"))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".keys.json.")
        .tempfile_in(data_dir)
        .map_err(io("write"))?;
    let file = KeysFile {
        keys: keys.to_vec(),
    };
    serde_json::to_writer_pretty(temp.as_file_mut(), &file)
        .map_err(|error| io("write")(error.into()))?;
    temp.as_file().sync_all().map_err(io("sync"))?;
    temp.persist(keys_file(data_dir))
        .map_err(|error| io("replace")(error.error))?;
    // The rename is durable once the directory is synced.
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates a key of `role` in `data_dir`'s keys file and returns it with its secret.
pub fn create(data_dir: &Path, role: Role, name: Option<&str>) -> Result<CreatedKey, KeysError> {
    if let Some(name) = name
        && (name.chars().count() > NAME_CHARS_MAX || name.chars().any(char::is_control))
    {
        return Err(KeysError::BadName);
    }
    let mut keys = load(&keys_file(data_dir))?;
    if keys.len() >= KEYS_MAX {
        return Err(KeysError::TooMany);
    }
    let rng = SystemRandom::new();
    let secret = format!("{KEY_PREFIX}{}", random_base62(&rng, KEY_RANDOM_CHARS)?);
    let id = loop {
        let id = random_base62(&rng, 8)?.to_ascii_lowercase();
        if keys.iter().all(|key| key.id != id) {
            break id;
        }
    };
    let record = KeyRecord {
        id,
        name: name.map(str::to_string),
        role,
        sha256: hash_hex(&secret),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    keys.push(record.clone());
    save(data_dir, &keys)?;
    Ok(CreatedKey { record, secret })
}

/// Deletes the key with `id`.
pub fn delete(data_dir: &Path, id: &str) -> Result<KeyRecord, KeysError> {
    let mut keys = load(&keys_file(data_dir))?;
    let index = keys
        .iter()
        .position(|key| key.id == id)
        .ok_or_else(|| KeysError::UnknownId(id.to_string()))?;
    let removed = keys.remove(index);
    save(data_dir, &keys)?;
    Ok(removed)
}

/// The role of the stored key matching `presented`, comparing its hash with every stored hash in constant time.
pub fn find(keys: &[KeyRecord], presented: &str) -> Option<Role> {
    if presented.len() > PRESENTED_BYTES_MAX {
        return None;
    }
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for key in keys {
        let Some(stored) = hex_to_hash(&key.sha256) else {
            continue;
        };
        if bool::from(subtle::ConstantTimeEq::ct_eq(&stored[..], &hash[..])) {
            found = Some(key.role);
        }
    }
    found
}

fn hash_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn hex_to_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(hash)
}

/// `count` base62 characters, without modulo bias (bytes of 248 and above are drawn again).
fn random_base62(rng: &SystemRandom, count: usize) -> Result<String, KeysError> {
    const LIMIT: u8 = 62 * 4;
    let mut text = String::with_capacity(count);
    let mut bytes = [0u8; 64];
    while text.len() < count {
        rng.fill(&mut bytes).map_err(|_| KeysError::Random)?;
        for byte in bytes {
            if byte < LIMIT && text.len() < count {
                text.push(char::from(BASE62[usize::from(byte % 62)]));
            }
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_stored_hashed_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let created = create(dir.path(), Role::Admin, Some("ci")).unwrap();
        assert!(created.secret.starts_with(KEY_PREFIX));
        assert_eq!(created.secret.len(), KEY_PREFIX.len() + KEY_RANDOM_CHARS);
        let text = std::fs::read_to_string(keys_file(dir.path())).unwrap();
        assert!(!text.contains(&created.secret));
        assert!(!text.contains(&created.secret[KEY_PREFIX.len()..]));
        assert!(text.contains(&hash_hex(&created.secret)));
        let mode = std::fs::metadata(keys_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let keys = load(&keys_file(dir.path())).unwrap();
        assert_eq!(keys, vec![created.record.clone()]);
        assert_eq!(find(&keys, &created.secret), Some(Role::Admin));
        assert_eq!(find(&keys, "omx_nope"), None);
        assert_eq!(
            find(&keys, &created.secret[..created.secret.len() - 1]),
            None
        );
    }

    #[test]
    fn keys_are_bounded_and_deleted_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = None;
        for _ in 0..KEYS_MAX {
            let created = create(dir.path(), Role::Inference, None).unwrap();
            first.get_or_insert(created);
        }
        assert!(matches!(
            create(dir.path(), Role::Inference, None),
            Err(KeysError::TooMany)
        ));
        let first = first.unwrap();
        delete(dir.path(), &first.record.id).unwrap();
        let keys = load(&keys_file(dir.path())).unwrap();
        assert_eq!(keys.len(), KEYS_MAX - 1);
        assert_eq!(find(&keys, &first.secret), None);
        assert!(matches!(
            delete(dir.path(), &first.record.id),
            Err(KeysError::UnknownId(_))
        ));
    }

    #[test]
    fn a_corrupt_file_is_an_error_and_a_missing_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&keys_file(dir.path())).unwrap().is_empty());
        std::fs::write(keys_file(dir.path()), "{not json").unwrap();
        let error = load(&keys_file(dir.path())).unwrap_err();
        assert!(matches!(error, KeysError::Corrupt(_)));
        assert!(!error.to_string().contains(&*dir.path().to_string_lossy()));
    }

    #[test]
    fn names_are_bounded_and_printable() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(NAME_CHARS_MAX + 1);
        assert!(matches!(
            create(dir.path(), Role::Admin, Some(&long)),
            Err(KeysError::BadName)
        ));
        assert!(matches!(
            create(dir.path(), Role::Admin, Some("a\nb")),
            Err(KeysError::BadName)
        ));
    }
}
