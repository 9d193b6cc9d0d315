//! Encryption of everything that leaves the box: XChaCha20-Poly1305 (RustCrypto
//! `chacha20poly1305`), chunked so that an object streams through in bounded
//! memory and a chunk cannot be reordered, dropped or moved to another object.
//!
//! An object is:
//!
//! ```text
//!  0  magic          "CLNRENC2"                             8 bytes
//!  8  key id         first 8 bytes of HKDF(key, "cln-replica key id v1")
//! 16  nonce prefix   random                                 16 bytes
//! 32  journal id     the journal it belongs to              16 bytes
//! 48  generation     u64 little-endian                      8 bytes
//! 56  base hash      SHA-256 of the generation's base header  32 bytes
//! 88  chunks         each min(CHUNK_BYTES, rest) of plaintext + 16-byte tag
//! ```
//!
//! Chunk i is sealed with nonce = prefix ‖ i (u32 BE) ‖ last (u8) ‖ 0 0 0 and
//! associated data = the 88 header bytes ‖ object name. So the object's name,
//! journal, generation and base are all authenticated: an object renamed,
//! copied under another journal's prefix, or moved to a generation with
//! another base fails, and the reader learns the (authenticated) context from
//! the header before it trusts anything. The `last` flag on the final chunk
//! makes truncation at a chunk boundary fail; the key id lets a restore say
//! "wrong key" instead of "tampered". An empty plaintext is one empty final
//! chunk. Readers stop at a bound on the object's size: a huge bogus object
//! costs one chunk of reading before it is refused.
//!
//! Keys: a 32-byte key from a key file (hex, mode 0600, made by `cln-replica
//! keygen`), or derived from lightningd's `hsm_secret` ([`super::hsm`]).

use crate::journal::identity::JournalId;
use anyhow::{bail, Context as _, Result};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"CLNRENC2";
pub const HEADER_BYTES: usize = 88;
pub const TAG_BYTES: usize = 16;
/// Plaintext bytes per chunk: what a reader or writer holds at once.
pub const CHUNK_BYTES: usize = 1 << 20;
const STRIDE: usize = CHUNK_BYTES + TAG_BYTES;
const KEY_ID_LABEL: &[u8] = b"cln-replica key id v1";
/// A key file is 64 hex digits and whitespace: anything longer is not one.
const KEY_FILE_BYTES_MAX: u64 = 4096;

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

    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// Reads a key file: 64 hex digits (whitespace ignored). Refuses a file
    /// that others can read, and anything that is not a small regular file.
    pub fn load_file(path: &Path) -> Result<Key> {
        let text = read_private_file(path, KEY_FILE_BYTES_MAX, "the key file")?;
        let digits: String = String::from_utf8_lossy(&text).chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = unhex(&digits)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| anyhow::anyhow!("the key file {} does not hold 64 hex digits", path.display()))?;
        Ok(Key::from_bytes(bytes.try_into().expect("32 bytes")))
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

/// Reads a secret file: opened without blocking (a FIFO under its name must
/// not hang the plugin), a regular file of at most `max` bytes, not readable
/// by group or others. Errors name the file, never its content.
pub fn read_private_file(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let meta = f.metadata().with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{what} {} is readable by other users (mode {:o}): `chmod 600` it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    if meta.len() > max {
        bail!("{what} {} is {} bytes, more than such a file can be ({max})", path.display(), meta.len());
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1).read_to_end(&mut out).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if out.len() as u64 > max {
        bail!("{what} {} grew past {max} bytes while being read", path.display());
    }
    Ok(out)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// What an object belongs to: authenticated with it, readable before it is
/// opened (so a restore on a fresh machine learns the journal from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    pub journal: JournalId,
    pub generation: u64,
    /// SHA-256 of the generation's segment-1 header (its identity, base
    /// version, snapshot size and checksum, creation time, filter).
    pub base: [u8; 32],
}

impl Context {
    /// The base hash of a generation whose segment-1 header is `header`.
    pub fn base_hash(header: &crate::journal::format::SegmentHeader) -> [u8; 32] {
        use sha2::Digest;
        // The hash of segment 1's header, whatever segment a caller holds.
        let h = crate::journal::format::SegmentHeader { segment: 1, segment_bytes: 0, ..header.clone() };
        sha2::Sha256::digest(h.encode()).into()
    }
}

fn nonce(prefix: &[u8], index: u32, last: bool) -> XNonce {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(prefix);
    n[16..20].copy_from_slice(&index.to_be_bytes());
    n[20] = last as u8;
    XNonce::from(n)
}

fn header(key: &Key, prefix: &[u8; 16], ctx: &Context) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&key.id);
    h[16..32].copy_from_slice(prefix);
    h[32..48].copy_from_slice(&ctx.journal.0);
    h[48..56].copy_from_slice(&ctx.generation.to_le_bytes());
    h[56..88].copy_from_slice(&ctx.base);
    h
}

fn aad(header: &[u8], name: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEADER_BYTES + name.len());
    a.extend_from_slice(header);
    a.extend_from_slice(name.as_bytes());
    a
}

/// The size of the sealed object for `plain_bytes` of plaintext.
pub fn sealed_bytes(plain_bytes: u64) -> u64 {
    let chunks = plain_bytes.div_ceil(CHUNK_BYTES as u64).max(1);
    HEADER_BYTES as u64 + plain_bytes + chunks * TAG_BYTES as u64
}

/// Encrypts a plaintext stream as the object called `name`: a `Read` of the
/// sealed bytes, holding one chunk at a time.
pub struct SealReader<R: Read> {
    inner: R,
    cipher: XChaCha20Poly1305,
    prefix: [u8; 16],
    aad: Vec<u8>,
    index: u32,
    /// Plaintext read ahead: up to one chunk plus one byte (which tells
    /// whether the chunk is the last).
    plain: Vec<u8>,
    inner_done: bool,
    out: Vec<u8>,
    out_pos: usize,
    finished: bool,
}

impl<R: Read> SealReader<R> {
    pub fn new(key: &Key, name: &str, ctx: &Context, inner: R) -> Result<SealReader<R>> {
        let mut prefix = [0u8; 16];
        getrandom::fill(&mut prefix).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        let h = header(key, &prefix, ctx);
        Ok(SealReader {
            inner,
            cipher: key.cipher(),
            prefix,
            aad: aad(&h, name),
            index: 0,
            plain: Vec::with_capacity(CHUNK_BYTES + 1),
            inner_done: false,
            out: h.to_vec(),
            out_pos: 0,
            finished: false,
        })
    }

    fn fill_plain(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 64 << 10];
        while !self.inner_done && self.plain.len() < CHUNK_BYTES + 1 {
            let want = (CHUNK_BYTES + 1 - self.plain.len()).min(buf.len());
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => self.inner_done = true,
                Ok(n) => self.plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        self.fill_plain()?;
        let last = self.plain.len() <= CHUNK_BYTES;
        let take = self.plain.len().min(CHUNK_BYTES);
        let n = nonce(&self.prefix, self.index, last);
        let ct = self
            .cipher
            .encrypt(&n, Payload { msg: &self.plain[..take], aad: &self.aad })
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.plain.drain(..take);
        self.index = self.index.checked_add(1).ok_or_else(|| io::Error::other("object too large to seal"))?;
        self.out = ct;
        self.out_pos = 0;
        self.finished = last;
        Ok(())
    }
}

impl<R: Read> Read for SealReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos == self.out.len() {
            if self.finished {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }
}

/// Encrypts `plain` as the object called `name` (small objects).
pub fn seal(key: &Key, name: &str, ctx: &Context, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(sealed_bytes(plain.len() as u64) as usize);
    SealReader::new(key, name, ctx, plain)?.read_to_end(&mut out).context("cannot seal")?;
    debug_assert_eq!(out.len() as u64, sealed_bytes(plain.len() as u64));
    Ok(out)
}

/// Why an object was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("not a cln-replica encrypted object (bad magic or shorter than its header)")]
    NotOurs,
    #[error("encrypted with another key (key id {found}, this key's id is {expected})")]
    WrongKey { found: String, expected: String },
    #[error(
        "authentication failed at chunk {chunk}: the object was altered, truncated, or swapped for another object"
    )]
    Auth { chunk: usize },
    #[error("larger than the {limit} bytes such an object can be")]
    TooLarge { limit: u64 },
    #[error("cannot read it: {0}")]
    Io(String),
}

impl OpenError {
    /// The refusal inside an I/O error from an [`OpenReader`], if it is one.
    pub fn from_io(e: &io::Error) -> Option<&OpenError> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<OpenError>())
    }
}

/// Decrypts and authenticates an object as a stream of plaintext, one chunk
/// at a time. A refusal surfaces as an `io::Error` wrapping [`OpenError`]
/// ([`OpenError::from_io`]); no plaintext of a chunk is returned before the
/// chunk authenticated.
pub struct OpenReader<R: Read> {
    inner: R,
    cipher: XChaCha20Poly1305,
    prefix: [u8; 16],
    aad: Vec<u8>,
    index: usize,
    /// Sealed bytes read ahead: up to one stride plus one byte.
    sealed: Vec<u8>,
    inner_done: bool,
    read_bytes: u64,
    limit: u64,
    plain: Vec<u8>,
    plain_pos: usize,
    finished: bool,
    failed: Option<OpenError>,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Starts opening the object called `name`, at most `limit` sealed bytes:
/// reads and checks the header, and returns its (still to be authenticated
/// by the first chunk) context with the plaintext reader.
pub fn open_reader<R: Read>(
    key: &Key,
    name: &str,
    mut inner: R,
    limit: u64,
) -> Result<(Context, OpenReader<R>), OpenError> {
    let mut h = [0u8; HEADER_BYTES];
    let got = read_full(&mut inner, &mut h).map_err(|e| OpenError::Io(e.to_string()))?;
    if got < HEADER_BYTES || h[..8] != MAGIC {
        return Err(OpenError::NotOurs);
    }
    if h[8..16] != key.id {
        return Err(OpenError::WrongKey { found: hex(&h[8..16]), expected: key.id_hex() });
    }
    let ctx = Context {
        journal: JournalId(h[32..48].try_into().expect("16 bytes")),
        generation: u64::from_le_bytes(h[48..56].try_into().expect("8 bytes")),
        base: h[56..88].try_into().expect("32 bytes"),
    };
    let reader = OpenReader {
        inner,
        cipher: key.cipher(),
        prefix: h[16..32].try_into().expect("16 bytes"),
        aad: aad(&h, name),
        index: 0,
        sealed: Vec::with_capacity(STRIDE + 1),
        inner_done: false,
        read_bytes: HEADER_BYTES as u64,
        limit,
        plain: vec![],
        plain_pos: 0,
        finished: false,
        failed: None,
    };
    Ok((ctx, reader))
}

impl<R: Read> OpenReader<R> {
    /// Changes the bound on the object's size, once what has been read so
    /// far (authenticated) tells what the object can be.
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    fn fill(&mut self) -> Result<(), OpenError> {
        let mut buf = [0u8; 64 << 10];
        while !self.inner_done && self.sealed.len() < STRIDE + 1 {
            let want = (STRIDE + 1 - self.sealed.len()).min(buf.len());
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => self.inner_done = true,
                Ok(n) => {
                    self.read_bytes += n as u64;
                    if self.read_bytes > self.limit {
                        return Err(OpenError::TooLarge { limit: self.limit });
                    }
                    self.sealed.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(OpenError::Io(e.to_string())),
            }
        }
        Ok(())
    }

    fn next_chunk(&mut self) -> Result<(), OpenError> {
        self.fill()?;
        let last = self.sealed.len() <= STRIDE;
        let take = self.sealed.len().min(STRIDE);
        if take < TAG_BYTES {
            return Err(OpenError::Auth { chunk: self.index });
        }
        let n = nonce(&self.prefix, self.index as u32, last);
        let pt = self
            .cipher
            .decrypt(&n, Payload { msg: &self.sealed[..take], aad: &self.aad })
            .map_err(|_| OpenError::Auth { chunk: self.index })?;
        self.sealed.drain(..take);
        self.index += 1;
        self.plain = pt;
        self.plain_pos = 0;
        self.finished = last;
        Ok(())
    }

    /// Reads what is left (there must be nothing) and authenticates the last
    /// chunk: a reader that stops early has not proven the object whole.
    pub fn finish(mut self) -> Result<(), OpenError> {
        let mut sink = [0u8; 4096];
        loop {
            match self.read(&mut sink) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(OpenError::from_io(&e).cloned().unwrap_or(OpenError::Io(e.to_string()))),
            }
        }
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.clone()));
        }
        while self.plain_pos == self.plain.len() {
            if self.finished {
                return Ok(0);
            }
            if let Err(e) = self.next_chunk() {
                self.failed = Some(e.clone());
                return Err(io::Error::other(e));
            }
        }
        let n = buf.len().min(self.plain.len() - self.plain_pos);
        buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        Ok(n)
    }
}

/// Decrypts and authenticates the object called `name` (small objects).
pub fn open(key: &Key, name: &str, sealed: &[u8], limit: u64) -> Result<(Context, Vec<u8>), OpenError> {
    if sealed.len() as u64 > limit {
        return Err(OpenError::TooLarge { limit });
    }
    let (ctx, mut r) = open_reader(key, name, sealed, limit)?;
    let mut out = Vec::with_capacity(sealed.len());
    r.read_to_end(&mut out).map_err(|e| OpenError::from_io(&e).cloned().unwrap_or(OpenError::Io(e.to_string())))?;
    Ok((ctx, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context { journal: JournalId([3; 16]), generation: 7, base: [9; 32] }
    }

    #[test]
    fn round_trip_and_every_kind_of_tampering() {
        let key = Key::generate().unwrap();
        let big = u64::MAX;
        for len in [0, 1, CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 5, 2 * CHUNK_BYTES] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let s = seal(&key, "gen-1/base", &ctx(), &plain).unwrap();
            assert_eq!(s.len() as u64, sealed_bytes(len as u64));
            assert_eq!(open(&key, "gen-1/base", &s, big).unwrap(), (ctx(), plain.clone()), "len {len}");
            // Renamed / swapped object.
            assert!(matches!(open(&key, "gen-2/base", &s, big), Err(OpenError::Auth { .. })));
            // A flipped bit anywhere after the nonce prefix, the context included.
            for at in [HEADER_BYTES + (len / 2), 40, 50, 60] {
                let mut t = s.clone();
                t[at] ^= 1;
                assert!(matches!(open(&key, "gen-1/base", &t, big), Err(OpenError::Auth { .. })), "{at}");
            }
            // Truncated, also at a chunk boundary.
            if len > CHUNK_BYTES {
                let cut = &s[..HEADER_BYTES + STRIDE];
                assert!(matches!(open(&key, "gen-1/base", cut, big), Err(OpenError::Auth { .. })));
            }
            assert!(open(&key, "gen-1/base", &s[..s.len() - 1], big).is_err());
            // Bounded: never read past the limit.
            if len > CHUNK_BYTES {
                let limit = (HEADER_BYTES + STRIDE) as u64;
                let (_, r) = open_reader(&key, "gen-1/base", &s[..], limit).unwrap();
                assert_eq!(r.finish(), Err(OpenError::TooLarge { limit }));
            }
        }
        let other = Key::generate().unwrap();
        let s = seal(&key, "x", &ctx(), b"hello").unwrap();
        assert!(matches!(open(&other, "x", &s, big), Err(OpenError::WrongKey { .. })));
        assert_eq!(open(&key, "x", b"garbage", big), Err(OpenError::NotOurs));
    }

    #[test]
    fn a_huge_bogus_object_costs_one_chunk() {
        let key = Key::generate().unwrap();
        let mut s = seal(&key, "x", &ctx(), b"").unwrap()[..HEADER_BYTES].to_vec();
        s.resize(HEADER_BYTES + 3 * STRIDE, 0xAA);
        struct Counting<'a>(&'a [u8], usize);
        impl Read for Counting<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.0.len() - self.1);
                b[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let mut src = Counting(&s, 0);
        let (_, r) = open_reader(&key, "x", &mut src, u64::MAX).unwrap();
        assert_eq!(r.finish(), Err(OpenError::Auth { chunk: 0 }));
        assert!(src.1 <= HEADER_BYTES + STRIDE + 1 + (64 << 10), "read {} bytes", src.1);
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
        // A FIFO under the key file's name is refused at once, not waited on.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(Key::load_file(&fifo).unwrap_err().to_string().contains("not a regular file"));
    }
}
