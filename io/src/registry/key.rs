//! The ed25519 key that signs token requests, kept as Ollama keeps it: an unencrypted OpenSSH private key
//! (PEM `OPENSSH PRIVATE KEY` around the `openssh-key-v1` format of OpenSSH's PROTOCOL.key) in
//! `~/.ollama/id_ed25519`, beside its `authorized_keys` line in `id_ed25519.pub`. `ollama serve` creates the
//! pair when it is missing; the public half is what a user registers with ollama.com.
//!
//! Ollama's `auth.Sign` answers `<public key>:<signature>`: the public key as the base64 of its SSH wire form
//! (the middle field of the `.pub` line), the signature as the base64 of the raw 64-byte ed25519 signature.
//!
//! Error texts name no path (the key lives in a home directory) and never quote key material.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::RegistryError;

/// The SSH name of the key type.
const KEY_TYPE: &str = "ssh-ed25519";
/// The start of every `openssh-key-v1` blob, NUL included.
const MAGIC: &[u8] = b"openssh-key-v1\0";
const PEM_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PEM_END: &str = "-----END OPENSSH PRIVATE KEY-----";
/// Characters per base64 line when writing, as ssh-keygen writes them.
const PEM_LINE_CHARS: usize = 70;
/// Largest key file read: an ed25519 key is about 400 bytes.
const KEY_FILE_BYTES_MAX: u64 = 16 << 10;
/// The private section is padded to this block size (the "none" cipher's).
const PADDING_BLOCK_BYTES: usize = 8;
const SEED_BYTES: usize = 32;
const PUBLIC_BYTES: usize = 32;

/// A loaded signing key.
pub(crate) struct Identity {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads the key at `path`, or creates it (with its `.pub`) if there is none, as `ollama serve` does.
    pub(crate) fn load_or_create(path: &Path) -> Result<Identity, RegistryError> {
        match read_key_file(path) {
            Ok(text) => Identity::parse(&text),
            Err(error) if error.kind() == IoErrorKind::NotFound => Identity::create(path),
            Err(error) => Err(key_error(format!("cannot read it: {error}"))),
        }
    }

    /// Parses an unencrypted OpenSSH ed25519 private key.
    pub(crate) fn parse(text: &str) -> Result<Identity, RegistryError> {
        let bytes = decode_pem(text)?;
        let mut reader = WireReader::new(&bytes);
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(key_error("not an OpenSSH private key"));
        }
        if reader.string()? != b"none" {
            return Err(key_error(
                "it is encrypted with a passphrase, which is not supported",
            ));
        }
        let _kdf = reader.string()?;
        let _kdf_options = reader.string()?;
        if reader.u32()? != 1 {
            return Err(key_error("the file must hold exactly one key"));
        }
        let public_blob = reader.string()?;
        let mut private = WireReader::new(reader.string()?);
        if private.u32()? != private.u32()? {
            return Err(key_error("corrupt private section"));
        }
        if private.string()? != KEY_TYPE.as_bytes() {
            return Err(key_error("not an ed25519 key"));
        }
        let public = private.string()?;
        let secret = private.string()?;
        if public.len() != PUBLIC_BYTES || secret.len() != SEED_BYTES + PUBLIC_BYTES {
            return Err(key_error("corrupt ed25519 key"));
        }
        if &secret[SEED_BYTES..] != public || public_blob != public_wire(public) {
            return Err(key_error("its public and private halves differ"));
        }
        let pair = Ed25519KeyPair::from_seed_and_public_key(&secret[..SEED_BYTES], public)
            .map_err(|_| key_error("its public and private halves differ"))?;
        Ok(Identity { pair })
    }

    /// A new random key, written to `path` (mode 0600) and `path.pub`; an existing key wins a race.
    fn create(path: &Path) -> Result<Identity, RegistryError> {
        let random = SystemRandom::new();
        let mut seed = [0u8; SEED_BYTES];
        random
            .fill(&mut seed)
            .map_err(|_| key_error("no randomness to create one"))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| key_error("cannot create one"))?;
        let mut check = [0u8; 4];
        random
            .fill(&mut check)
            .map_err(|_| key_error("no randomness to create one"))?;
        let text = encode_pem(&seed, pair.public_key().as_ref(), check);
        seed.fill(0);
        let identity = Identity { pair };

        let directory = path
            .parent()
            .ok_or_else(|| key_error("its path has no directory"))?;
        std::fs::create_dir_all(directory)
            .map_err(|error| key_error(format!("cannot create its directory: {error}")))?;
        // tempfile creates files readable by their owner only, as a private key must be.
        let mut file = tempfile::NamedTempFile::new_in(directory)
            .map_err(|error| key_error(format!("cannot create it: {}", error.kind())))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .map_err(|error| key_error(format!("cannot write it: {}", error.kind())))?;
        match file.persist_noclobber(path) {
            Ok(_) => {}
            // Another process created one meanwhile: use theirs.
            Err(error) if error.error.kind() == IoErrorKind::AlreadyExists => {
                let text = read_key_file(path)
                    .map_err(|error| key_error(format!("cannot read it: {error}")))?;
                return Identity::parse(&text);
            }
            Err(error) => {
                return Err(key_error(format!(
                    "cannot create it: {}",
                    error.error.kind()
                )));
            }
        }
        identity.write_public(&public_path(path), directory)?;
        Ok(identity)
    }

    fn write_public(&self, path: &Path, directory: &Path) -> Result<(), RegistryError> {
        use std::os::unix::fs::PermissionsExt as _;
        let line = format!("{}\n", self.authorized_key());
        let mut file = tempfile::NamedTempFile::new_in(directory)
            .map_err(|error| key_error(format!("cannot write its .pub: {}", error.kind())))?;
        file.write_all(line.as_bytes())
            .and_then(|()| {
                file.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o644))
            })
            .map_err(|error| key_error(format!("cannot write its .pub: {}", error.kind())))?;
        file.persist(path)
            .map_err(|error| key_error(format!("cannot write its .pub: {}", error.error.kind())))?;
        Ok(())
    }

    /// The base64 of the public key's SSH wire form, as in the middle of its `.pub` line.
    pub(crate) fn public_key(&self) -> String {
        STANDARD.encode(public_wire(self.pair.public_key().as_ref()))
    }

    /// The `authorized_keys` line, without a comment or newline.
    pub(crate) fn authorized_key(&self) -> String {
        format!("{KEY_TYPE} {}", self.public_key())
    }

    /// `<public key>:<signature>`, Ollama's `Authorization` value for a signed request.
    pub(crate) fn sign(&self, data: &[u8]) -> String {
        let signature = self.pair.sign(data);
        format!(
            "{}:{}",
            self.public_key(),
            STANDARD.encode(signature.as_ref())
        )
    }
}

/// `<key path>.pub`.
fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn key_error(message: impl Into<String>) -> RegistryError {
    RegistryError::SigningKey(message.into())
}

fn read_key_file(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(KEY_FILE_BYTES_MAX).read_to_string(&mut text)?;
    Ok(text)
}

/// The SSH wire form of an ed25519 public key: `string "ssh-ed25519", string key`.
fn public_wire(public: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, KEY_TYPE.as_bytes());
    put_string(&mut out, public);
    out
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).expect("key fields are small");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn encode_pem(seed: &[u8; SEED_BYTES], public: &[u8], check: [u8; 4]) -> String {
    assert_eq!(public.len(), PUBLIC_BYTES);
    let mut private = Vec::new();
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, KEY_TYPE.as_bytes());
    put_string(&mut private, public);
    let mut secret = seed.to_vec();
    secret.extend_from_slice(public);
    put_string(&mut private, &secret);
    secret.fill(0);
    put_string(&mut private, b"");
    let mut pad = 1u8;
    while !private.len().is_multiple_of(PADDING_BLOCK_BYTES) {
        private.push(pad);
        pad += 1;
    }
    let mut blob = MAGIC.to_vec();
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"none");
    put_string(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut blob, &public_wire(public));
    put_string(&mut blob, &private);
    private.fill(0);
    let encoded = STANDARD.encode(&blob);
    blob.fill(0);
    let mut text = format!("{PEM_BEGIN}\n");
    for line in encoded.as_bytes().chunks(PEM_LINE_CHARS) {
        text.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        text.push('\n');
    }
    text.push_str(PEM_END);
    text.push('\n');
    text
}

fn decode_pem(text: &str) -> Result<Vec<u8>, RegistryError> {
    let start = text
        .find(PEM_BEGIN)
        .ok_or_else(|| key_error("not an OpenSSH private key"))?
        + PEM_BEGIN.len();
    let end = text[start..]
        .find(PEM_END)
        .ok_or_else(|| key_error("not an OpenSSH private key"))?
        + start;
    let body: String = text[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(body)
        .map_err(|_| key_error("not an OpenSSH private key"))
}

/// Reads SSH wire fields (big-endian `uint32`, length-prefixed `string`), failing on truncation.
struct WireReader<'a> {
    rest: &'a [u8],
}

impl<'a> WireReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        WireReader { rest: bytes }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], RegistryError> {
        if self.rest.len() < count {
            return Err(key_error("truncated key"));
        }
        let (head, tail) = self.rest.split_at(count);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, RegistryError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes(bytes.try_into().expect("four bytes")))
    }

    fn string(&mut self) -> Result<&'a [u8], RegistryError> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by `ssh-keygen -t ed25519 -N "" -C ""`.
    const FIXTURE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACB4jgCG+nIKUMhl3tG1ASvssC8udRIpzVTucQsPt+41AAAAAIj9dBV//XQV
fwAAAAtzc2gtZWQyNTUxOQAAACB4jgCG+nIKUMhl3tG1ASvssC8udRIpzVTucQsPt+41AA
AAAECx3pOroPw2TyQhzf+4l9f7lFo5XqTm9j52bunRvHylI3iOAIb6cgpQyGXe0bUBK+yw
Ly51EinNVO5xCw+37jUAAAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
";
    /// Its `.pub` line.
    const FIXTURE_PUBLIC: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHiOAIb6cgpQyGXe0bUBK+ywLy51EinNVO5xCw+37jUA";
    /// Its signature of `ollamamax`, made by Python's `cryptography` from the same file.
    const FIXTURE_SIGNATURE: &str =
        "bqmYhDGnTRl8mo4yyaylSTXsb32rkJp3sJi98AhXUU85U9n7SZ3bughQd+I0tTau15Gy2G2zoUA+yhFFi5zPBA==";

    #[test]
    fn parses_an_ssh_keygen_key_and_signs_as_ollama_does() {
        let identity = Identity::parse(FIXTURE).unwrap();
        assert_eq!(identity.authorized_key(), FIXTURE_PUBLIC);
        let public = FIXTURE_PUBLIC.split(' ').nth(1).unwrap();
        assert_eq!(
            identity.sign(b"ollamamax"),
            format!("{public}:{FIXTURE_SIGNATURE}")
        );
    }

    #[test]
    fn written_keys_parse_back() {
        let seed = [7u8; SEED_BYTES];
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let text = encode_pem(&seed, pair.public_key().as_ref(), [1, 2, 3, 4]);
        assert!(text.lines().all(|line| line.len() <= PEM_LINE_CHARS));
        let identity = Identity::parse(&text).unwrap();
        assert_eq!(
            identity.public_key(),
            STANDARD.encode(public_wire(pair.public_key().as_ref()))
        );
    }

    #[test]
    fn refuses_encrypted_truncated_and_foreign_keys() {
        let encrypted = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABAjqUMy
-----END OPENSSH PRIVATE KEY-----";
        let error = Identity::parse(encrypted).unwrap_err();
        assert!(error.to_string().contains("passphrase"), "{error}");
        let truncated: String = FIXTURE.lines().take(3).collect::<Vec<_>>().join("\n");
        let truncated = format!("{truncated}\n{PEM_END}\n");
        assert!(Identity::parse(&truncated).is_err());
        assert!(Identity::parse("-----BEGIN RSA PRIVATE KEY-----").is_err());
        // Errors quote no key material.
        let error = Identity::parse(&truncated).unwrap_err().to_string();
        assert!(!error.contains("b3Blbn"), "{error}");
    }

    #[test]
    fn creates_a_key_once_with_its_public_line() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join(".ollama/id_ed25519");
        let created = Identity::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let line = std::fs::read_to_string(public_path(&path)).unwrap();
        assert_eq!(line, format!("{}\n", created.authorized_key()));
        let loaded = Identity::load_or_create(&path).unwrap();
        assert_eq!(loaded.public_key(), created.public_key());
    }
}
