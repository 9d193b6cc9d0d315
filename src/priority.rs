//! Priorities of background threads: compaction and the mirror yield to
//! the hook.

/// Lowers the calling thread's CPU and I/O priority (nice 10, idle I/O class
/// where the I/O scheduler honours it): background work yields to the hook.
pub fn background_priority() {
    // SAFETY: plain syscalls on the calling thread's id; no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid as libc::c_long, IOPRIO_CLASS_IDLE << 13);
    }
}
