//! The destinations' key derived from the node's own secret, lightningd's
//! `hsm_secret`, read the way lightningd reads it (CLN's
//! `common/hsm_secret.c`, `detect_hsm_secret_type` and
//! `extract_hsm_secret`):
//!
//! | size | what | lightningd's secret |
//! | --- | --- | --- |
//! | 32 | the legacy raw secret | the 32 bytes |
//! | 73 | the legacy secret encrypted with a passphrase (libsodium secretstream, Argon2id) | refused here: decrypt it first, or use `key_file` |
//! | > 32, first 32 bytes zero | a BIP39 mnemonic (v25.12 and later), no passphrase: 32 zero bytes, then the words as text | the BIP39 seed of the words, passphrase "" |
//! | > 32, first 32 bytes not zero | a mnemonic with a passphrase (`--hsm-passphrase`): SHA-256 of the seed, then the words | the BIP39 seed of the words and the passphrase |
//!
//! The BIP39 seed is PBKDF2-HMAC-SHA512 of the words (as stored) with the salt
//! "mnemonic" ‖ passphrase, 2048 iterations, 64 bytes (libwally's
//! `bip39_mnemonic_to_seed`, which normalises neither). The key is then
//! HKDF-SHA256 of that secret, salt "cln-replica", info
//! [`HSM_LABEL`]: a label no key lightningd derives uses, so the key reveals
//! nothing about the node's keys and is the same on any machine that has the
//! hsm_secret, or the words (and passphrase), and nothing else.

use super::crypto::Key;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// HKDF `info` for the key derived from hsm_secret. Changing it changes every key.
pub const HSM_LABEL: &[u8] = b"cln-replica remote encryption key v1";
const HSM_SALT: &[u8] = b"cln-replica";
const LEGACY_BYTES: usize = 32;
/// `crypto_secretstream_xchacha20poly1305_HEADERBYTES` + 32 + `ABYTES`.
const ENCRYPTED_BYTES: usize = 73;
/// A mnemonic hsm_secret is 32 bytes and at most 24 words of at most 8 letters.
const HSM_SECRET_BYTES_MAX: u64 = 32 + 24 * 9;
const PASSPHRASE_BYTES_MAX: u64 = 1024;
const BIP39_ROUNDS: u32 = 2048;

fn key_from_secret(secret: &[u8]) -> Key {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(HSM_SALT), secret);
    let mut key = [0u8; 32];
    hk.expand(HSM_LABEL, &mut key).expect("32 bytes is a valid HKDF length");
    Key::from_bytes(key)
}

/// The BIP39 seed of `words` (exactly as given) and `passphrase`.
pub fn bip39_seed(words: &str, passphrase: &str) -> [u8; 64] {
    let mut seed = [0u8; 64];
    let salt = format!("mnemonic{passphrase}");
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(words.as_bytes(), salt.as_bytes(), BIP39_ROUNDS, &mut seed);
    seed
}

/// Checks the words against BIP39's English list and checksum. The error
/// never repeats the words.
fn validate_words(words: &str) -> Result<()> {
    if bip39::Mnemonic::parse_in_normalized(bip39::Language::English, words).is_err() {
        bail!("not a valid BIP39 mnemonic (a word not in the English list, a wrong count, or a bad checksum)");
    }
    Ok(())
}

/// The key from the contents of an hsm_secret file.
pub fn key_from_hsm_secret(secret: &[u8], passphrase: Option<&str>) -> Result<Key> {
    match secret.len() {
        LEGACY_BYTES => {
            if passphrase.is_some() {
                bail!("this hsm_secret is the 32-byte legacy format, which takes no passphrase");
            }
            Ok(key_from_secret(secret))
        }
        ENCRYPTED_BYTES => bail!(
            "this hsm_secret is the legacy format encrypted with a passphrase (73 bytes), which cln-replica does not \
             read: use `key_file` instead"
        ),
        n if n < LEGACY_BYTES => bail!("this hsm_secret is {n} bytes: not one lightningd writes"),
        _ => {
            let (hash, words) = secret.split_at(32);
            let words = std::str::from_utf8(words).context("the mnemonic in this hsm_secret is not text")?;
            validate_words(words).context("the mnemonic in this hsm_secret")?;
            let needs_passphrase = hash.iter().any(|&b| b != 0);
            let seed = match (needs_passphrase, passphrase) {
                (false, None) => bip39_seed(words, ""),
                (false, Some(_)) => bail!("this hsm_secret was created without a passphrase: give none"),
                (true, None) => bail!(
                    "this hsm_secret needs the passphrase lightningd was started with (--hsm-passphrase): set \
                     `hsm_passphrase_file` (or --hsm-passphrase-file)"
                ),
                (true, Some(p)) => {
                    use sha2::Digest;
                    let seed = bip39_seed(words, p);
                    if sha2::Sha256::digest(seed).as_slice() != hash {
                        bail!("wrong passphrase for this hsm_secret");
                    }
                    seed
                }
            };
            Ok(key_from_secret(&seed))
        }
    }
}

/// The key from the mnemonic words typed in (any whitespace, any case) and
/// the passphrase, if lightningd was given one: the same key as from the
/// hsm_secret lightningd wrote for those words.
pub fn key_from_words(typed: &str, passphrase: Option<&str>) -> Result<Key> {
    let words = typed.split_whitespace().map(str::to_ascii_lowercase).collect::<Vec<_>>().join(" ");
    validate_words(&words)?;
    Ok(key_from_secret(&bip39_seed(&words, passphrase.unwrap_or(""))))
}

/// Reads an hsm_secret file (a small regular file, never waited on).
pub fn load_hsm_secret(path: &Path, passphrase: Option<&str>) -> Result<Key> {
    let secret = read_secret_file(path, HSM_SECRET_BYTES_MAX, "the hsm_secret")?;
    key_from_hsm_secret(&secret, passphrase).with_context(|| format!("cannot derive a key from {}", path.display()))
}

/// Reads a passphrase file: its content, without one trailing newline.
pub fn load_passphrase(path: &Path) -> Result<String> {
    let bytes = super::crypto::read_private_file(path, PASSPHRASE_BYTES_MAX, "the passphrase file")?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not text", path.display()))?;
    Ok(text.strip_suffix('\n').unwrap_or(&text).to_string())
}

/// lightningd writes hsm_secret 0400; a copy an operator keeps may be 0600.
/// Either way it must not be readable by others.
fn read_secret_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    super::crypto::read_private_file(path, max, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIP39's reference vectors (trezor/python-mnemonic vectors.json), passphrase "TREZOR".
    #[test]
    fn seeds_match_the_bip39_reference_vectors() {
        let v = [
            (
                "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
                "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
            ),
            (
                "legal winner thank year wave sausage worth useful legal winner thank yellow",
                "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1069be3a3a5bd381ee6260e8d9739fce1f607",
            ),
        ];
        for (words, seed) in v {
            assert_eq!(crate::remote::crypto::hex(&bip39_seed(words, "TREZOR")), seed);
        }
    }

    #[test]
    fn every_format_lightningd_writes() {
        let words = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
        let mut file = vec![0u8; 32];
        file.extend_from_slice(words.as_bytes());
        let k = key_from_hsm_secret(&file, None).unwrap();
        assert_eq!(k.id(), key_from_words(&format!("  {}\n", words.to_uppercase()), None).unwrap().id());
        assert!(key_from_hsm_secret(&file, Some("x")).is_err());
        // With a passphrase: the stored hash is SHA-256 of the seed.
        use sha2::Digest;
        let mut with = sha2::Sha256::digest(bip39_seed(words, "secret words")).to_vec();
        with.extend_from_slice(words.as_bytes());
        let kp = key_from_hsm_secret(&with, Some("secret words")).unwrap();
        assert_ne!(kp.id(), k.id());
        assert_eq!(kp.id(), key_from_words(words, Some("secret words")).unwrap().id());
        assert!(key_from_hsm_secret(&with, None).unwrap_err().to_string().contains("passphrase"));
        assert!(key_from_hsm_secret(&with, Some("wrong")).unwrap_err().to_string().contains("wrong passphrase"));
        // Legacy formats.
        let a = key_from_hsm_secret(&[7u8; 32], None).unwrap();
        assert_eq!(a.id(), key_from_hsm_secret(&[7u8; 32], None).unwrap().id());
        assert!(key_from_hsm_secret(&[7u8; 73], None).unwrap_err().to_string().contains("encrypted"));
        // A typo in the words: refused, without repeating them.
        let e = key_from_words(
            "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a valid BIP39 mnemonic") && !e.contains("abandon"), "{e}");
    }
}
