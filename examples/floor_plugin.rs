//! The floor of a synchronous second-device backup, as a lightningd plugin:
//! it registers `db_write` and makes each change durable with exactly one
//! O_DIRECT write of the change's bytes (padded to whole blocks) plus one
//! `fdatasync`, into a file zero-filled in advance. Nothing else: no format,
//! no checksum, no compression, no restore. `tests/realnode/bench.py` runs a
//! real node with it, beside the same node without a plugin and with
//! cln-replica, to show what the durable write itself costs (docs/REAL-NODE.md,
//! "Cost").
//!
//! Configured by the environment (lightningd passes its own on):
//! - `FLOOR_PLUGIN_FILE`: the file to write (default `floor-plugin.dat` in the
//!   working directory, lightningd's network directory);
//! - `FLOOR_PLUGIN_MIB`: its size in MiB (default 64); writes wrap around at
//!   the end, so every write lands in space that was written and flushed once;
//! - `FLOOR_PLUGIN_TRACE`: if set, a file to which each hook's service time
//!   (from the message read and parsed to the answer written; cln-replica's
//!   `CLN_REPLICA_HOOK_TRACE` counts its parse too, a few µs) is written at
//!   exit as `unix_ms us io_us` lines, `io_us` being the write and the
//!   fdatasync alone, so that the benchmark compares the two plugins' tails
//!   inside the node on the same footing and tells the device's part of the
//!   tail from the rest. At most [`TRACE_SAMPLES_MAX`] are kept; a last line
//!   `# dropped N` says how many were not.
//!
//! Built with `cargo build --profile ci --example floor_plugin`.

use serde_json::{json, Value};
use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// O_DIRECT alignment of buffer, offset and length: 4 KiB covers the 512 B
/// and 4 KiB logical blocks of the devices this runs on.
const BLOCK: usize = 4096;
/// The zero-fill is written in pieces of this size.
const FILL_CHUNK_BYTES: usize = 1 << 20;

/// Hook samples kept for `FLOOR_PLUGIN_TRACE`, allocated at start so that
/// recording one never allocates on the hook's path.
const TRACE_SAMPLES_MAX: usize = 1 << 16;

/// Each hook's `(unix_ms, us, io_us)`, written out at exit.
struct Trace {
    path: String,
    samples: Vec<(u64, u32, u32)>,
    dropped: u64,
}

impl Trace {
    fn from_env() -> Option<Trace> {
        let path = std::env::var("FLOOR_PLUGIN_TRACE").ok().filter(|p| !p.is_empty())?;
        Some(Trace { path, samples: Vec::with_capacity(TRACE_SAMPLES_MAX), dropped: 0 })
    }

    fn record(&mut self, took_us: u64, io_us: u64) {
        if self.samples.len() == TRACE_SAMPLES_MAX {
            self.dropped += 1;
            return;
        }
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let us = |v: u64| v.min(u32::MAX as u64) as u32;
        self.samples.push((ms, us(took_us), us(io_us)));
    }

    fn write(&self) -> io::Result<()> {
        let mut text = String::with_capacity(self.samples.len() * 20);
        for (ms, us, io_us) in &self.samples {
            text.push_str(&format!("{ms} {us} {io_us}\n"));
        }
        if self.dropped > 0 {
            text.push_str(&format!("# dropped {}\n", self.dropped));
        }
        let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
        f.write_all(text.as_bytes())
    }
}

/// A block-aligned heap buffer (O_DIRECT refuses unaligned addresses).
struct Aligned {
    ptr: *mut u8,
    cap: usize,
}

impl Aligned {
    fn new(cap: usize) -> Aligned {
        let layout = Layout::from_size_align(cap, BLOCK).expect("layout");
        // SAFETY: cap is non-zero (callers ask for at least one block).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation of {cap} bytes failed");
        Aligned { ptr, cap }
    }

    fn slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.cap);
        // SAFETY: ptr is valid for cap bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this layout.
        unsafe { alloc::dealloc(self.ptr, Layout::from_size_align(self.cap, BLOCK).expect("layout")) }
    }
}

struct Floor {
    file: File,
    file_bytes: u64,
    offset: u64,
    buf: Aligned,
}

impl Floor {
    fn open() -> io::Result<Floor> {
        let path = std::env::var("FLOOR_PLUGIN_FILE").unwrap_or_else(|_| "floor-plugin.dat".into());
        let mib: u64 = std::env::var("FLOOR_PLUGIN_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
        let file_bytes = mib.max(1) << 20;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let mut buf = Aligned::new(FILL_CHUNK_BYTES);
        // Zero-filled and flushed once, so that no hook's write allocates
        // blocks (an allocating write makes fdatasync commit ext4 metadata).
        let zeros = buf.slice(FILL_CHUNK_BYTES);
        let mut at = 0;
        while at < file_bytes {
            file.write_all_at(zeros, at)?;
            at += FILL_CHUNK_BYTES as u64;
        }
        file.sync_all()?;
        Ok(Floor { file, file_bytes, offset: 0, buf })
    }

    /// One O_DIRECT write of the statements' bytes, one fdatasync.
    fn write(&mut self, writes: &[Value]) -> io::Result<()> {
        let len: usize = writes.iter().filter_map(Value::as_str).map(str::len).sum();
        let padded = len.max(1).next_multiple_of(BLOCK);
        if padded > self.buf.cap {
            self.buf = Aligned::new(padded.next_power_of_two());
        }
        let out = self.buf.slice(padded);
        let mut at = 0;
        for w in writes.iter().filter_map(Value::as_str) {
            out[at..at + w.len()].copy_from_slice(w.as_bytes());
            at += w.len();
        }
        out[at..].fill(0);
        if self.offset + padded as u64 > self.file_bytes {
            self.offset = 0;
        }
        self.file.write_all_at(out, self.offset)?;
        self.file.sync_data()?;
        self.offset = (self.offset + padded as u64) % self.file_bytes;
        Ok(())
    }
}

fn reply(out: &mut impl Write, id: &Value, result: Value) -> io::Result<()> {
    let msg = json!({"jsonrpc": "2.0", "id": id, "result": result});
    out.write_all(msg.to_string().as_bytes())?;
    out.write_all(b"\n\n")?;
    out.flush()
}

fn main() -> io::Result<()> {
    let mut floor = Floor::open()?;
    let mut trace = Trace::from_env();
    let stdin = BufReader::new(io::stdin().lock());
    let mut stdout = io::stdout().lock();
    // lightningd separates messages with blank lines; the stream deserializer
    // accepts any whitespace between objects. End of input: lightningd went.
    for msg in serde_json::Deserializer::from_reader(stdin).into_iter::<Value>() {
        let msg = msg?;
        let started = Instant::now();
        let Some(id) = msg.get("id") else { continue };
        match msg["method"].as_str() {
            Some("getmanifest") => reply(
                &mut stdout,
                id,
                json!({"options": [], "rpcmethods": [], "subscriptions": [], "hooks": [{"name": "db_write"}],
                       "dynamic": false, "nonnumericids": true}),
            )?,
            Some("init") => reply(&mut stdout, id, json!({}))?,
            Some("db_write") => {
                let writes = msg["params"]["writes"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                // A failed write must not be acknowledged: exiting makes
                // lightningd (for which this is an important plugin) stop.
                let io_started = Instant::now();
                floor.write(writes)?;
                let io_us = io_started.elapsed().as_micros() as u64;
                reply(&mut stdout, id, json!({"result": "continue"}))?;
                if let Some(t) = trace.as_mut() {
                    t.record(started.elapsed().as_micros() as u64, io_us);
                }
            }
            _ => {
                let err = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "unknown method"}});
                stdout.write_all(err.to_string().as_bytes())?;
                stdout.write_all(b"\n\n")?;
                stdout.flush()?;
            }
        }
    }
    if let Some(t) = &trace {
        t.write()?;
    }
    Ok(())
}
