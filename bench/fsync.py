#!/usr/bin/env python3
"""How long one fsync takes on the disk that holds DIR (default: the current directory).

With synchronous=FULL every SQLite commit waits for one fsync of the WAL, so this bounds
how many commits per second any SQLite-backed service can make on this disk.

    python3 bench/fsync.py [DIR] [ROUNDS]
"""
import os
import statistics
import sys
import tempfile
import time

directory = sys.argv[1] if len(sys.argv) > 1 else "."
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 300
fd, path = tempfile.mkstemp(dir=directory, prefix="fsync-probe-")
try:
    samples = []
    for _ in range(rounds):
        os.write(fd, b"x" * 4096)
        start = time.perf_counter()
        os.fsync(fd)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    print(
        f"fsync on {os.path.abspath(directory)}: median {statistics.median(samples):.3f} ms, "
        f"p90 {samples[int(len(samples) * 0.9)]:.3f} ms over {rounds} writes of 4 KiB"
    )
finally:
    os.close(fd)
    os.unlink(path)
