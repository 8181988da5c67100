//! The agent's dealings with glibc's allocator: few arenas, and freed
//! memory handed back to the system between jobs.

/// glibc gives each thread that allocates its own arena, up to eight per
/// core, and keeps what each one grew to. Since shipping goes on beside a
/// base backup or a restore, more of the agent's threads (the runtime's,
/// the compression and inflation pools, blocking I/O) allocate at once:
/// two arenas took the pitr bench's agent peak RSS from 59.7 to 56.1 MiB
/// under load and from 64.8 to 58.4 MiB with the restores, on two cores
/// (more cores, more arenas). The threads allocate little each (buffers
/// are reused), so they seldom wait on each other.
///
/// Call before any other thread exists.
#[allow(unsafe_code)] // one libc call; no crate here wraps mallopt
pub fn limit_arenas() {
    const ARENAS: libc::c_int = 2;
    // SAFETY: mallopt only changes a malloc setting; the caller runs it
    // before any thread other than its own exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Hands what the arenas hold freed back to the system. A job's buffers
/// (a restore's load queues, a backup's compression) are freed when it
/// ends but stay resident in the arena that served them, and the next
/// job's threads may be served by the other arena: the two peaks then
/// added up.
#[allow(unsafe_code)] // one libc call; no crate here wraps malloc_trim
pub fn release_freed() {
    // SAFETY: malloc_trim only returns free pages to the system; glibc
    // locks each arena while it does, so any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
