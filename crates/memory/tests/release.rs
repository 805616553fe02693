//! A freed argon2-sized block leaves the process: the resident set does not keep it. The
//! only test of this binary, so no other test allocates while it measures.

#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

/// The memory argon2 takes for one key check (m = 19456 KiB).
const ARGON2_BYTES: usize = 19 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

fn resident_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024.0
}

/// Allocates and writes a block of argon2's size on a new thread, then frees it.
fn one_check() {
    std::thread::spawn(|| {
        let block = black_box(vec![7u8; ARGON2_BYTES]);
        assert_eq!(block[ARGON2_BYTES - 1], 7);
    })
    .join()
    .unwrap();
}

#[test]
fn freed_large_blocks_are_returned_to_the_system() {
    assert!(keygate_memory::release_large_allocations(), "glibc accepts the threshold");
    let before = resident_bytes();
    // Without the fixed threshold the first block is mmapped and returned, raising glibc's
    // threshold above its size; each later one stays in its thread's heap.
    for _ in 0..4 {
        one_check();
    }
    let grown = (resident_bytes() - before) / MIB;
    assert!(grown < 4.0, "the resident set kept {grown:.1} MiB of freed blocks");
}
