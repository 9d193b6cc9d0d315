//! The segment preparer: a background thread that creates the next segment
//! (header, zeros, flush, rename) while the current one fills, so that a hook
//! never waits for a zero-fill. One job at a time: the writer asks for
//! segment k+1 when it starts writing into segment k.

use super::format::SegmentHeader;
use super::segment::create_segment;
use crate::device::Device;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// Background creation of the next segment, so that the hook never waits
/// for a zero-fill. One job at a time: the writer asks for segment k+1 when
/// it starts writing into segment k.
pub(super) struct Preparer {
    /// `None` once the preparer is shutting down.
    jobs: Option<mpsc::SyncSender<(u64, PathBuf, SegmentHeader)>>,
    slot: Arc<(Mutex<Slot>, Condvar)>,
    worker: Option<thread::JoinHandle<()>>,
}

#[derive(Debug)]
enum Slot {
    Idle,
    Working { generation: u64, segment: u32 },
    Done { generation: u64, segment: u32, result: Result<u64, String> },
}

impl Preparer {
    pub(super) fn spawn(device: Arc<dyn Device>, direct: bool) -> Preparer {
        // Capacity 1: the writer never has more than one segment ahead.
        let (tx, rx) = mpsc::sync_channel::<(u64, PathBuf, SegmentHeader)>(1);
        let slot = Arc::new((Mutex::new(Slot::Idle), Condvar::new()));
        let worker_slot = slot.clone();
        let worker = thread::Builder::new()
            .name("segment-preparer".into())
            .spawn(move || {
                for (generation, dir, header) in rx {
                    let result = create_segment(device.as_ref(), &dir, &header, direct)
                        .map(|()| header.segment_bytes)
                        .map_err(|e| e.to_string());
                    let (lock, cv) = &*worker_slot;
                    let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                    *s = Slot::Done { generation, segment: header.segment, result };
                    cv.notify_all();
                }
            })
            .expect("spawn the segment preparer thread");
        Preparer { jobs: Some(tx), slot, worker: Some(worker) }
    }

    /// Stops the worker once its current job is done. Until then it may be
    /// writing into the journal directory, so the journal's lock must be held.
    pub(super) fn shutdown(&mut self) {
        drop(self.jobs.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }

    pub(super) fn request(&self, generation: u64, dir: PathBuf, header: SegmentHeader) {
        let (lock, _) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(*s, Slot::Working { .. }) {
            // A previous job is still running (a generation changed under it);
            // the switch will create the segment itself if needed.
            return;
        }
        *s = Slot::Working { generation, segment: header.segment };
        drop(s);
        let sent = self.jobs.as_ref().is_some_and(|j| j.try_send((generation, dir, header)).is_ok());
        if !sent {
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Idle;
            self.slot.1.notify_all();
        }
    }

    /// Waits until no job is running (its result, if any, stays for `take`).
    pub(super) fn wait_idle(&self) {
        let (lock, cv) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*s, Slot::Working { .. }) {
            s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A segment prepared by an earlier process, found clean at open.
    pub(super) fn mark_ready(&self, generation: u64, segment: u32, bytes: u64) {
        let (lock, _) = &*self.slot;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = Slot::Done { generation, segment, result: Ok(bytes) };
    }

    /// The prepared segment's size, waiting if it is still being created.
    /// `None` if nothing was prepared for this segment.
    pub(super) fn take(&self, generation: u64, segment: u32) -> Option<Result<u64, String>> {
        let (lock, cv) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match &*s {
                Slot::Working { generation: g, segment: k } if (*g, *k) == (generation, segment) => {
                    s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                Slot::Done { generation: g, segment: k, .. } if (*g, *k) == (generation, segment) => {
                    let Slot::Done { result, .. } = std::mem::replace(&mut *s, Slot::Idle) else { unreachable!() };
                    return Some(result);
                }
                _ => return None,
            }
        }
    }
}
