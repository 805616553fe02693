//! Allocator tuning for the `keygate` process.
//!
//! An app-key or root-key check that misses the cache runs argon2, which allocates 19 MiB
//! at once. glibc serves its first allocation that large with `mmap` and returns it on
//! free, but then raises its mmap threshold to that size (its dynamic threshold, up to
//! 32 MiB), so every later argon2 run is served from the heap of the calling thread's arena
//! and stays resident after it is freed: each worker thread that ever ran argon2 kept
//! 19 MiB. Measured with `just bench` on 2026-12-01, this was 40 of the gateway's 100 MiB
//! peak RSS.
//!
//! [`release_large_allocations`] fixes the threshold at glibc's own default, 128 KiB, which
//! also turns the dynamic adjustment off: a block that large goes back to the system when
//! it is freed, whatever happened before. Hot-path allocations are far smaller, so the cost
//! is one `mmap` and `munmap` per argon2 run.

/// The size from which allocations are served by `mmap` and returned on free (glibc's
/// default initial threshold).
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Makes glibc return every allocation of [`MMAP_THRESHOLD`] or more to the system when it
/// is freed. Call it first thing in `main`, before other threads start. Returns whether the
/// setting was applied: `false` on any other C library, where it does nothing.
pub fn release_large_allocations() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: libc::c_int = MMAP_THRESHOLD as libc::c_int;
        // SAFETY: mallopt only changes a parameter of the allocator, under the allocator's
        // own lock; it reads no memory of ours. It answers 0 when it refuses the value.
        #[allow(unsafe_code)]
        let applied = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD) };
        applied == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
