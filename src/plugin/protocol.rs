//! JSON-RPC 2.0 framing over the plugin's stdin and stdout.
//!
//! lightningd writes one JSON object per message and ends each with a blank
//! line, but a reader must accept any whitespace between objects (docs/LIGHTNINGD.md).
//! [`FrameReader`] finds object boundaries itself (tracking strings and
//! escapes), so a message is parsed once, from one contiguous slice, and a
//! read can wait with a timeout (needed after `shutdown`). Anything that is not
//! a JSON object between messages is a protocol error: the plugin cannot know
//! whether it was a hook waiting for an answer, so it stops (and lightningd,
//! for which it is an important plugin, stops with it).

use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::{self, Read, Write};
use std::os::unix::io::RawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Largest message accepted. lightningd caps no db_write (its first start
/// after an upgrade sends the whole migration, bookkeeper's history
/// included, as one: hundreds of MiB on a busy node), and holds about five
/// times the SQL itself while it waits (docs/LIGHTNINGD.md, "Size limits").
/// The bound is what the plugin's address space can hold at about 1.5x.
#[cfg(target_pointer_width = "64")]
pub const MESSAGE_BYTES_MAX: usize = 4 << 30;
#[cfg(not(target_pointer_width = "64"))]
pub const MESSAGE_BYTES_MAX: usize = 1 << 30;

#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("reading from lightningd: {0}")]
    Io(#[from] io::Error),
    #[error("lightningd sent byte {0:#04x} where a JSON object should start")]
    Garbage(u8),
    #[error("a message from lightningd exceeds {MESSAGE_BYTES_MAX} bytes")]
    TooLarge,
    #[error("lightningd closed the connection in the middle of a message")]
    Truncated,
}

#[derive(Debug)]
pub enum Frame {
    /// One complete JSON object (its bytes, without surrounding whitespace).
    Message(Vec<u8>),
    /// lightningd closed our stdin.
    Eof,
    /// No complete message arrived within the timeout.
    Timeout,
}

/// Splits a byte stream into JSON objects.
///
/// The buffer is reused: bytes live in `buf[start..end]`, and `scanned`
/// marks how far the current object has been examined, so a message that
/// arrives in many reads is scanned once. Inside strings (the SQL statements,
/// nearly all of a `db_write`), `memchr` jumps to the next quote or backslash.
pub struct FrameReader<R> {
    inner: R,
    /// File descriptor to poll for a timed read; `None` reads block.
    poll_fd: Option<RawFd>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Absolute index in `buf` up to which the current object was scanned.
    scanned: usize,
    depth: u32,
    in_string: bool,
    escaped: bool,
    eof: bool,
}

const READ_CHUNK: usize = 64 << 10;

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, poll_fd: Option<RawFd>) -> Self {
        FrameReader {
            inner,
            poll_fd,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            eof: false,
        }
    }

    /// Scans new bytes; returns the end (absolute index) of a complete object
    /// starting at `start` once its closing brace is seen.
    fn scan(&mut self) -> Result<Option<usize>, ProtocolError> {
        let end = self.end;
        let mut i = self.scanned;
        while i < end {
            if self.depth == 0 {
                match self.buf[i] {
                    // Whitespace between messages: skip it.
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        i += 1;
                        self.start = i;
                        continue;
                    }
                    b'{' => self.depth = 1,
                    other => return Err(ProtocolError::Garbage(other)),
                }
                i += 1;
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                match memchr::memchr2(b'"', b'\\', &self.buf[i..end]) {
                    None => {
                        i = end;
                        break;
                    }
                    Some(k) => {
                        i += k;
                        if self.buf[i] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += 1;
                    }
                }
                continue;
            }
            match self.buf[i] {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        // The object a message is must close with a brace;
                        // inner mismatches are left to the JSON parser.
                        if self.buf[i] != b'}' {
                            return Err(ProtocolError::Garbage(self.buf[i]));
                        }
                        self.scanned = i + 1;
                        return Ok(Some(i + 1));
                    }
                }
                _ => {}
            }
            i += 1;
        }
        self.scanned = i;
        if self.end - self.start > MESSAGE_BYTES_MAX {
            return Err(ProtocolError::TooLarge);
        }
        Ok(None)
    }

    fn wait_readable(&self, deadline: Option<Instant>) -> Result<bool, ProtocolError> {
        let (Some(fd), Some(deadline)) = (self.poll_fd, deadline) else { return Ok(true) };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            return Ok(rc > 0);
        }
    }

    /// Makes room for at least one more read at `end`: moves the unread
    /// bytes to the front, or grows the buffer (zeroed once, then reused).
    fn make_room(&mut self) {
        if self.end < self.buf.len() {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.scanned -= self.start;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // By half again: a message the size of the buffer costs at most
            // 1.5 times itself (the buffer becomes the message, not a copy).
            let grown = (self.buf.len() + self.buf.len() / 2).clamp(READ_CHUNK, MESSAGE_BYTES_MAX + READ_CHUNK);
            self.buf.resize(grown, 0);
        }
    }

    /// The bytes of the object ending at `obj_end`. A large one takes the
    /// buffer itself (what follows it moves to a new, small buffer): a
    /// message of hundreds of MiB is never copied.
    fn take_message(&mut self, obj_end: usize) -> Vec<u8> {
        if obj_end - self.start < READ_CHUNK * 4 {
            let msg = self.buf[self.start..obj_end].to_vec();
            self.start = obj_end;
            self.scanned = obj_end;
            if self.start == self.end {
                (self.start, self.end, self.scanned) = (0, 0, 0);
            }
            return msg;
        }
        let after = self.end - obj_end;
        let mut rest = vec![0; READ_CHUNK.max(after)];
        rest[..after].copy_from_slice(&self.buf[obj_end..self.end]);
        let mut msg = std::mem::replace(&mut self.buf, rest);
        msg.truncate(obj_end);
        msg.drain(..self.start);
        (self.start, self.end, self.scanned) = (0, after, 0);
        msg
    }

    /// The next message; with `timeout`, gives up after that long without
    /// a complete message.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Frame, ProtocolError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(obj_end) = self.scan()? {
                let msg = self.take_message(obj_end);
                self.depth = 0;
                return Ok(Frame::Message(msg));
            }
            if self.eof {
                return if self.start == self.end { Ok(Frame::Eof) } else { Err(ProtocolError::Truncated) };
            }
            if !self.wait_readable(deadline)? {
                return Ok(Frame::Timeout);
            }
            self.make_room();
            let n = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            self.end += n;
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

/// A message from lightningd: a request (with `id`) or a notification.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(borrow, default)]
    pub id: Option<&'a RawValue>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
}

/// The `db_write` hook's parameters.
#[derive(Debug, Deserialize)]
pub struct DbWrite<'a> {
    pub data_version: u32,
    #[serde(borrow)]
    pub writes: Vec<Statement<'a>>,
}

/// One SQL statement, borrowed from the message unless it contains JSON
/// escapes (serde does not borrow through `Vec<Cow>` without this wrapper).
#[derive(Debug, Deserialize)]
pub struct Statement<'a>(#[serde(borrow)] pub std::borrow::Cow<'a, str>);

impl AsRef<str> for Statement<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The plugin's stdout, shared by the main loop (replies) and background
/// threads (log notifications). Every message is written whole and flushed.
pub struct Output {
    inner: Mutex<Box<dyn Write + Send>>,
}

impl Output {
    pub fn new(w: Box<dyn Write + Send>) -> Output {
        Output { inner: Mutex::new(w) }
    }

    pub fn send(&self, json: &str) -> io::Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(json.as_bytes())?;
        w.write_all(b"\n\n")?;
        w.flush()
    }

    pub fn reply(&self, id: &RawValue, result: &str) -> io::Result<()> {
        self.send(&format!(r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#, id.get(), result))
    }

    pub fn reply_error(&self, id: &RawValue, code: i32, message: &str) -> io::Result<()> {
        let message = serde_json::to_string(message).expect("string serialises");
        self.send(&format!(r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":{code},"message":{message}}}}}"#, id.get()))
    }

    /// A `log` notification: it lands in lightningd's log with our name.
    /// Levels: "debug", "info", "warn", "error".
    pub fn log(&self, level: &str, message: &str) {
        let message = serde_json::to_string(message).expect("string serialises");
        let _ = self
            .send(&format!(r#"{{"jsonrpc":"2.0","method":"log","params":{{"level":"{level}","message":{message}}}}}"#));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> (Vec<String>, Option<String>) {
        let mut r = FrameReader::new(input, None);
        let mut out = vec![];
        loop {
            match r.next(None) {
                Ok(Frame::Message(m)) => out.push(String::from_utf8(m).unwrap()),
                Ok(Frame::Eof) => return (out, None),
                Ok(Frame::Timeout) => unreachable!(),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn any_whitespace_between_objects() {
        let (msgs, err) = frames(b"{\"a\":1}\n\n{\"b\":\"}{\\\"\"}{}\r\n\t {\"c\":[{},{\"d\":\"]\"}]}\n");
        assert_eq!(msgs, vec!["{\"a\":1}", "{\"b\":\"}{\\\"\"}", "{}", "{\"c\":[{},{\"d\":\"]\"}]}"]);
        assert!(err.is_none());
    }

    /// A reader that hands out at most `step` bytes per read.
    struct Trickle(Vec<u8>, usize, usize);
    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.2.min(out.len()).min(self.0.len() - self.1);
            out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    /// A message large enough to take the buffer, with the next one read
    /// along with it: both come out whole and in order.
    #[test]
    fn a_large_message_takes_the_buffer_and_leaves_the_next_one() {
        let big = format!(r#"{{"id":1,"params":{{"writes":["{}"]}}}}"#, "x".repeat(3 << 20));
        let small = r#"{"id":2}"#;
        let stream = format!("{big}\n\n{small}\n\n{big}\n\n");
        for step in [1 << 20, 7 << 20] {
            let mut r = FrameReader::new(Trickle(stream.clone().into_bytes(), 0, step), None);
            for want in [big.as_str(), small, big.as_str()] {
                match r.next(None).unwrap() {
                    Frame::Message(m) => assert_eq!(m, want.as_bytes(), "step {step}"),
                    other => panic!("{other:?}"),
                }
            }
            assert!(matches!(r.next(None).unwrap(), Frame::Eof));
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let (msgs, err) = frames(b"{\"a\":1} x {\"b\":2}");
        assert_eq!(msgs.len(), 1);
        assert!(err.unwrap().contains("0x78"));
        let (msgs, err) = frames(b"{\"a\":1}\n{\"b\":");
        assert_eq!(msgs.len(), 1);
        assert!(err.unwrap().contains("middle"));
        // Found by tests/fuzz.rs: an object closed by a bracket is not a message.
        let (msgs, err) = frames(b"{]}");
        assert!(msgs.is_empty() && err.is_some());
    }

    #[test]
    fn messages_split_across_reads() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let input = br#"{"id":"cln:db_write#42","params":{"writes":["x\"}"]}}  {"id":7}"#;
        let mut r = FrameReader::new(Trickle(input), None);
        let Frame::Message(m) = r.next(None).unwrap() else { panic!() };
        assert_eq!(m, &input[..53]);
        let Frame::Message(m) = r.next(None).unwrap() else { panic!() };
        assert_eq!(m, br#"{"id":7}"#);
        assert!(matches!(r.next(None).unwrap(), Frame::Eof));
    }

    #[test]
    fn db_write_params_borrow_and_reject_bad_types() {
        let ok: DbWrite = serde_json::from_str(r#"{"data_version":4294967295,"writes":["a","b\"c"]}"#).unwrap();
        assert_eq!(ok.data_version, u32::MAX);
        assert!(matches!(ok.writes[0].0, std::borrow::Cow::Borrowed("a")));
        assert_eq!(ok.writes[1].as_ref(), "b\"c");
        for bad in [
            r#"{"data_version":-1,"writes":[]}"#,
            r#"{"data_version":4294967296,"writes":[]}"#,
            r#"{"data_version":1,"writes":[1]}"#,
            r#"{"data_version":1,"writes":"x"}"#,
            r#"{"writes":[]}"#,
        ] {
            assert!(serde_json::from_str::<DbWrite>(bad).is_err(), "{bad}");
        }
    }
}
