//! Encryption of everything that leaves the box: XChaCha20-Poly1305 (RustCrypto
//! `chacha20poly1305`), chunked so that a chunk cannot be reordered, dropped or
//! moved to another object, with the object's name as associated data so an
//! object swapped for another (or renamed) fails authentication.
//!
//! An object is:
//!
//! ```text
//!  0  magic          "CLNRENC1"                 8 bytes
//!  8  key id         first 8 bytes of HKDF(key, "cln-replica key id v1")
//! 16  nonce prefix   random                     16 bytes
//! 32  chunks         each min(CHUNK_BYTES, rest) of plaintext + 16-byte tag
//! ```
//!
//! Chunk i is sealed with nonce = prefix ‖ i (u32 BE) ‖ last (u8) ‖ 0 0 0 and
//! associated data = magic ‖ key id ‖ object name. The `last` flag on the
//! final chunk makes truncation at a chunk boundary fail; the key id lets a
//! restore say "wrong key" instead of "tampered". An empty plaintext is one
//! empty final chunk.
//!
//! Keys: a 32-byte key from a key file (hex, mode 0600, made by `cln-replica
//! keygen`), or derived from lightningd's `hsm_secret` with HKDF-SHA256 and a
//! domain-separation label, so that no key derived here equals any key
//! lightningd derives from the same secret.

use anyhow::{bail, Context, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"CLNRENC1";
pub const HEADER_BYTES: usize = 32;
pub const TAG_BYTES: usize = 16;
/// Plaintext bytes per chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// HKDF `info` for the key derived from hsm_secret. Changing it changes every key.
pub const HSM_LABEL: &[u8] = b"cln-replica remote encryption key v1";
const KEY_ID_LABEL: &[u8] = b"cln-replica key id v1";

/// The symmetric key. Its Debug never shows the bytes.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; 32],
    id: [u8; 8],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", self.id_hex())
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &bytes);
        let mut id = [0u8; 8];
        hk.expand(KEY_ID_LABEL, &mut id).expect("8 bytes is a valid HKDF length");
        Key { bytes, id }
    }

    /// A new random key.
    pub fn generate() -> Result<Key> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        Ok(Key::from_bytes(b))
    }

    /// The key derived from lightningd's `hsm_secret` (32 bytes; an
    /// `hsm_secret` encrypted with a passphrase cannot be used).
    pub fn from_hsm_secret(secret: &[u8]) -> Result<Key> {
        if secret.len() != 32 {
            bail!(
                "hsm_secret is {} bytes, expected 32: an hsm_secret encrypted with a passphrase (or a BIP39 one \
                 of another size) cannot be used; use `key_file` instead",
                secret.len()
            );
        }
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"cln-replica"), secret);
        let mut key = [0u8; 32];
        hk.expand(HSM_LABEL, &mut key).expect("32 bytes is a valid HKDF length");
        Ok(Key::from_bytes(key))
    }

    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// Reads a key file: 64 hex digits (whitespace ignored). Refuses a file
    /// that others can read.
    pub fn load_file(path: &Path) -> Result<Key> {
        let meta = fs::metadata(path).with_context(|| format!("cannot read the key file {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "the key file {} is readable by other users (mode {:o}): `chmod 600` it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        let text = fs::read_to_string(path).with_context(|| format!("cannot read the key file {}", path.display()))?;
        let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = unhex(&digits)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| anyhow::anyhow!("the key file {} does not hold 64 hex digits", path.display()))?;
        Ok(Key::from_bytes(bytes.try_into().expect("32 bytes")))
    }

    pub fn load_hsm_secret(path: &Path) -> Result<Key> {
        let secret = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Key::from_hsm_secret(&secret).with_context(|| format!("cannot derive a key from {}", path.display()))
    }

    /// Writes the key to a new file, mode 0600; never overwrites.
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
        f.write_all(format!("{}\n", hex(&self.bytes)).as_bytes())?;
        f.sync_all().with_context(|| format!("cannot flush {}", path.display()))?;
        Ok(())
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.bytes).into())
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn nonce(prefix: &[u8], index: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(prefix);
    n[16..20].copy_from_slice(&index.to_be_bytes());
    n[20] = last as u8;
    XNonce::from(n)
}

fn aad(key_id: &[u8], name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(16 + name.len());
    a.extend_from_slice(&MAGIC);
    a.extend_from_slice(key_id);
    a.extend_from_slice(name.as_bytes());
    a
}

/// Encrypts `plain` as the object called `name`.
pub fn seal(key: &Key, name: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let mut prefix = [0u8; 16];
    getrandom::fill(&mut prefix).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let chunks = plain.len().div_ceil(CHUNK_BYTES).max(1);
    let mut out = Vec::with_capacity(HEADER_BYTES + plain.len() + chunks * TAG_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&key.id);
    out.extend_from_slice(&prefix);
    let aad = aad(&key.id, name);
    let cipher = key.cipher();
    for i in 0..chunks {
        let part = &plain[(i * CHUNK_BYTES).min(plain.len())..((i + 1) * CHUNK_BYTES).min(plain.len())];
        let n = nonce(&prefix, i as u32, i + 1 == chunks);
        let ct =
            cipher.encrypt(&n, Payload { msg: part, aad: &aad }).map_err(|_| anyhow::anyhow!("encryption failed"))?;
        out.extend_from_slice(&ct);
    }
    debug_assert_eq!(out.len(), HEADER_BYTES + plain.len() + chunks * TAG_BYTES);
    Ok(out)
}

/// Why an object was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("not a cln-replica encrypted object (bad magic or shorter than its header)")]
    NotOurs,
    #[error("encrypted with another key (key id {found}, this key's id is {expected})")]
    WrongKey { found: String, expected: String },
    #[error(
        "authentication failed at chunk {chunk}: the object was altered, truncated, or swapped for another object"
    )]
    Auth { chunk: usize },
}

/// Decrypts and authenticates the object called `name`.
pub fn open(key: &Key, name: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < HEADER_BYTES + TAG_BYTES || sealed[..8] != MAGIC {
        return Err(OpenError::NotOurs);
    }
    if sealed[8..16] != key.id {
        return Err(OpenError::WrongKey { found: hex(&sealed[8..16]), expected: key.id_hex() });
    }
    let prefix = &sealed[16..32];
    let body = &sealed[HEADER_BYTES..];
    let aad = aad(&key.id, name);
    let cipher = key.cipher();
    let stride = CHUNK_BYTES + TAG_BYTES;
    let chunks = body.len().div_ceil(stride);
    let mut out = Vec::with_capacity(body.len());
    for i in 0..chunks {
        let part = &body[i * stride..((i + 1) * stride).min(body.len())];
        if part.len() < TAG_BYTES {
            return Err(OpenError::Auth { chunk: i });
        }
        let n = nonce(prefix, i as u32, i + 1 == chunks);
        let pt = cipher.decrypt(&n, Payload { msg: part, aad: &aad }).map_err(|_| OpenError::Auth { chunk: i })?;
        out.extend_from_slice(&pt);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_kind_of_tampering() {
        let key = Key::generate().unwrap();
        for len in [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 5, 2 * CHUNK_BYTES] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let s = seal(&key, "gen-1/base", &plain).unwrap();
            assert_eq!(open(&key, "gen-1/base", &s).unwrap(), plain, "len {len}");
            // Renamed / swapped object.
            assert!(matches!(open(&key, "gen-2/base", &s), Err(OpenError::Auth { .. })));
            // A flipped bit anywhere after the header.
            let mut t = s.clone();
            let at = HEADER_BYTES + (len / 2);
            t[at] ^= 1;
            assert!(matches!(open(&key, "gen-1/base", &t), Err(OpenError::Auth { .. })));
            // Truncated, also at a chunk boundary.
            if len > CHUNK_BYTES {
                let cut = &s[..HEADER_BYTES + CHUNK_BYTES + TAG_BYTES];
                assert!(matches!(open(&key, "gen-1/base", cut), Err(OpenError::Auth { .. })));
            }
            assert!(open(&key, "gen-1/base", &s[..s.len() - 1]).is_err());
        }
        let other = Key::generate().unwrap();
        let s = seal(&key, "x", b"hello").unwrap();
        assert!(matches!(open(&other, "x", &s), Err(OpenError::WrongKey { .. })));
        assert_eq!(open(&key, "x", b"garbage"), Err(OpenError::NotOurs));
    }

    #[test]
    fn hsm_derivation_is_stable_and_separated() {
        let a = Key::from_hsm_secret(&[7u8; 32]).unwrap();
        let b = Key::from_hsm_secret(&[7u8; 32]).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, [7u8; 32]);
        assert!(Key::from_hsm_secret(&[7u8; 73]).is_err());
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let key = Key::generate().unwrap();
        key.write_new_file(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Key::load_file(&p).unwrap().bytes, key.bytes);
        assert!(key.write_new_file(&p).is_err());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Key::load_file(&p).unwrap_err().to_string().contains("chmod 600"));
        assert!(!format!("{key:?}").contains(&hex(&key.bytes)));
    }
}
