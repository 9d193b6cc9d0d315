//! The `Store` conformance suite: the same tests against every destination
//! implementation (file:// here, s3s-fs and OpenSSH's sshd on 127.0.0.1 when
//! scripts/test.d/60-remote provides them): a new backend proves itself by
//! passing it.

mod remote_common;

use cln_replica::remote::store::{get_bounded, Store, StoreError};
use cln_replica::remote::DestinationConfig;
use std::io::Read;

/// A stream of `len` pseudo-random bytes, never held whole.
struct Pattern {
    left: u64,
    x: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            *b = self.x as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A reader that fails after `ok` bytes: an upload interrupted mid-way.
struct Failing(u64);

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::other("the source failed"));
        }
        let n = (buf.len() as u64).min(self.0) as usize;
        buf[..n].fill(7);
        self.0 -= n as u64;
        Ok(n)
    }
}

fn digest(r: &mut dyn Read) -> (u64, u32) {
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, mut crc) = (0u64, 0u32);
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            return (n, crc);
        }
        n += k as u64;
        crc = crc32c::crc32c_append(crc, &buf[..k]);
    }
}

/// Every behaviour the remote tier relies on. `refuses_overwrite`: whether
/// the store can tell that a name is taken (S3 cannot).
fn conformance(store: &dyn Store, refuses_overwrite: bool) {
    let what = store.describe();
    assert!(store.list("").unwrap().is_empty(), "{what}: a fresh destination is empty");
    assert!(store.get("gen-0000000001/base").unwrap().is_none(), "{what}: a missing object is None");
    assert!(store.list("gen-0000000001/").unwrap().is_empty(), "{what}: a missing directory lists empty");

    // put, get, list, nested names.
    store.put("gen-0000000001/base", &mut &b"base bytes"[..]).unwrap();
    store.put("gen-0000000001/rec-1", &mut &b"records"[..]).unwrap();
    store.put("tip", &mut &b"t1"[..]).unwrap();
    assert_eq!(get_bounded(store, "gen-0000000001/base", 100).unwrap().unwrap(), b"base bytes", "{what}");
    assert_eq!(store.list("").unwrap(), vec!["gen-0000000001/".to_string(), "tip".to_string()], "{what}");
    assert_eq!(store.list("gen-0000000001/").unwrap(), vec!["base".to_string(), "rec-1".to_string()], "{what}");
    assert!(get_bounded(store, "gen-0000000001/base", 3).is_err(), "{what}: a bound is a bound");

    // Never an overwrite where the store can tell; replace is atomic.
    match store.put("gen-0000000001/base", &mut &b"other"[..]) {
        Err(StoreError::Exists { .. }) => assert!(refuses_overwrite, "{what}"),
        Ok(()) => assert!(!refuses_overwrite, "{what}: overwrote an object"),
        Err(e) => panic!("{what}: {e}"),
    }
    if refuses_overwrite {
        assert_eq!(get_bounded(store, "gen-0000000001/base", 100).unwrap().unwrap(), b"base bytes", "{what}");
    }
    store.replace("tip", b"t2").unwrap();
    assert_eq!(get_bounded(store, "tip", 100).unwrap().unwrap(), b"t2", "{what}");

    // An interrupted upload leaves nothing under the name, and no visible temporary.
    assert!(store.put("gen-0000000001/rec-2", &mut Failing(300_000)).is_err(), "{what}");
    assert!(store.get("gen-0000000001/rec-2").unwrap().is_none(), "{what}: a partial object is visible");
    assert_eq!(store.list("gen-0000000001/").unwrap().len(), 2, "{what}: {:?}", store.list("gen-0000000001/"));

    // A large object streams through both ways.
    let len = 24 << 20;
    store.put("gen-0000000002/base", &mut Pattern { left: len, x: 99 }).unwrap();
    let expected = digest(&mut Pattern { left: len, x: 99 });
    assert_eq!(digest(&mut store.get("gen-0000000002/base").unwrap().unwrap()), expected, "{what}");

    // delete: objects, then the empty directory; a missing one is no error.
    for n in ["gen-0000000001/rec-1", "gen-0000000001/base", "gen-0000000001/base", "gen-0000000001/"] {
        store.delete(n).unwrap();
    }
    assert!(store.get("gen-0000000001/base").unwrap().is_none(), "{what}");
    assert!(!store.list("").unwrap().contains(&"gen-0000000001/".to_string()), "{what}");
}

#[test]
fn file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = cln_replica::remote::open_store(&DestinationConfig::new(&format!("file://{}/d", dir.path().display())))
        .unwrap();
    conformance(store.as_ref(), true);
    // And a FIFO planted under an object's name is refused at once.
    nix::unistd::mkfifo(&dir.path().join("d/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let e = store.get("fifo").err().expect("a FIFO is refused").to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

#[test]
#[ignore = "needs s3s-fs: scripts/test.d/60-remote"]
#[cfg(feature = "remote")]
fn s3_store_conforms() {
    remote_common::s3_env();
    let tmp = tempfile::tempdir().unwrap();
    let server = remote_common::S3Server::start(&tmp.path().join("s3"), remote_common::free_port());
    let store = cln_replica::remote::open_store(&DestinationConfig::new(&server.url("conformance"))).unwrap();
    conformance(store.as_ref(), false);
}

#[test]
#[ignore = "needs sshd: scripts/test.d/60-remote"]
#[cfg(feature = "remote-sftp")]
fn sftp_store_conforms() {
    let (url, key) = remote_common::sftp();
    let url = format!("{url}/conformance-{}?key={key}&known_hosts=accept", std::process::id());
    let store = cln_replica::remote::open_store(&DestinationConfig::new(&url)).unwrap();
    conformance(store.as_ref(), true);
}
