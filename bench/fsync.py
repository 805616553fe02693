#!/usr/bin/env python3
"""How long one fsync takes on the disk that holds DIR (default: the current directory),
and how much CPU one 4 KiB append plus its fsync costs.

With synchronous=FULL every SQLite commit waits for one fsync of the WAL, so the time
bounds how many commits per second any SQLite-backed service can make on this disk, and
the CPU (user + system of this process, per append + fsync) is the floor under the
gateway's CPU per commit at low load, where each renew commits on its own.

    python3 bench/fsync.py [DIR] [ROUNDS]
"""
import os
import statistics
import sys
import tempfile
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "."
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-probe-")
try:
    samples = []
    block = b"x" * 4096
    cpu_start = time.process_time()
    for _ in range(rounds):
        os.write(fd, block)
        start = time.perf_counter()
        os.fsync(fd)
        samples.append((time.perf_counter() - start) * 1000)
    cpu_us = (time.process_time() - cpu_start) * 1e6 / rounds
    samples.sort()
    print(
        f"fsync on {os.path.abspath(directory)}: median {statistics.median(samples):.3f} ms, "
        f"p90 {samples[int(len(samples) * 0.9)]:.3f} ms over {rounds} writes of 4 KiB; "
        f"CPU {cpu_us:.0f} µs per append + fsync (user + system)"
    )
finally:
    os.close(fd)
    os.unlink(path)
