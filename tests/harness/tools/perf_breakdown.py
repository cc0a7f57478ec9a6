#!/usr/bin/env python3
"""Where a process's CPU goes, by layer, from a `perf record` of it.

    perf record -F 499 -g -o gateway.data -p <pid> -- sleep 10
    python3 tests/harness/tools/perf_breakdown.py gateway.data [--top N]

Each sample is put in one group by the function it was taken in (its leaf frame): the kernel's
network path or its scheduler, crypto, quinn-proto, quinn's async driver, tokio, the allocator,
Baton's own code, and so on. Prints each group's share of the samples, largest first; with
`--top N`, the N functions with most samples in each group.
"""

import argparse
import collections
import re
import subprocess
import sys

GROUPS = [
    # (group, test on (symbol, shared object)); the first that matches wins.
    ("kernel: scheduling, wake-ups, epoll, timers",
     lambda sym, dso: dso.startswith("[kernel") and re.search(
         r"sched|switch|futex|wake|epoll|ep_|poll_|idle|hrtimer|timer|irqrestore|_raw_spin_unlock_irq$|tick", sym)),
    ("kernel: UDP send/receive, system calls, copies", lambda sym, dso: dso.startswith("[kernel")),
    ("crypto (AES-GCM, header protection)",
     lambda sym, dso: re.search(r"ring_core|ring::|rustls|aead|aes|gcm|ghash|HeaderProtection|PacketKey|HeaderKey", sym)),
    ("quinn-proto (connection state machine)", lambda sym, dso: "quinn_proto" in sym),
    ("quinn-udp", lambda sym, dso: "quinn_udp" in sym),
    ("quinn (async driver, endpoint)", lambda sym, dso: "quinn::" in sym),
    ("tokio (tasks, channels, timers)", lambda sym, dso: "tokio::" in sym),
    ("allocator", lambda sym, dso: re.search(r"^_?mi_|malloc|^free$|^cfree|__rust_(de)?alloc|realloc", sym)),
    ("memcpy/memset", lambda sym, dso: re.search(r"memmove|memcpy|memset|memcmp", sym)),
    ("Baton (routing, sessions, frames, players)", lambda sym, dso: re.search(r"baton|sample_region", sym)),
    ("tracing", lambda sym, dso: "tracing" in sym),
    ("clock", lambda sym, dso: re.search(r"clock_gettime|vdso", sym)),
    ("libc (other)", lambda sym, dso: "libc" in dso),
]


def group_of(sym, dso):
    for name, test in GROUPS:
        if test(sym, dso):
            return name
    return "other (unresolved addresses, the standard library)"


def leaf_frames(path):
    """The leaf frame (symbol, shared object) of every sample in a perf.data file."""
    script = subprocess.run(
        ["perf", "script", "-i", path, "-F", "ip,sym,dso", "--no-inline"],
        capture_output=True, text=True, check=True,
    ).stdout
    # With call graphs, a sample is a block of frames separated by a blank line; its first
    # line is the leaf.
    for block in script.split("\n\n"):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        match = re.match(r"([0-9a-f]+)\s+(.*)\s+\((.*)\)$", lines[0])
        if match:
            yield match.group(2), match.group(3).split("/")[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("perf_data")
    parser.add_argument("--top", type=int, default=0, help="functions to name in each group")
    args = parser.parse_args()
    counts = collections.Counter()
    functions = collections.defaultdict(collections.Counter)
    for sym, dso in leaf_frames(args.perf_data):
        group = group_of(sym, dso)
        counts[group] += 1
        functions[group][sym[:100]] += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit(f"{args.perf_data}: no samples")
    for group, count in counts.most_common():
        print(f"{100 * count / total:5.1f}%  {group}")
        for sym, n in functions[group].most_common(args.top):
            print(f"         {100 * n / total:5.1f}%  {sym}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
