#!/usr/bin/env python3
"""Self costs per function from the callgrind files `bench/counts.sh` keeps.

    KEEP=1 bench/counts.sh                       # note the work directory it keeps
    bench/callgrind_self.py DIR/callgrind.session             # top self costs
    bench/callgrind_self.py BEFORE/callgrind.bypass AFTER/callgrind.bypass
                                                  # what moved, function by function

Costs are instructions per request (N, 200 by default, as in counts.sh).
With one file: the TOP (30) functions by self cost. With two: the totals and the
TOP functions whose self cost moved most, either way (after minus before).
`--totals FILE` prints the file's instructions and allocation requests in all
(bench/counts.sh reads them so). Functions are matched by name, so two builds of different code compare as long
as their symbols keep their names (inlining can move a cost from one name to
another: read a pair of opposite moves together).
"""
import os
import re
import sys

COST = re.compile(r"^(?:[+-]?\d+|\*)\s+(\d+)")
FN = re.compile(r"^(c?)fn=\((\d+)\)(?: (.*))?")

# Allocation requests are counted where they reach the allocator: calls of
# an allocator's entry points (the C library's malloc family, mimalloc's
# mi_* functions, jemalloc's) from code outside that allocator. Rust's own
# entry points (__rust_alloc and the shims behind it) are not counted: fat
# LTO inlines them into their callers, so their calls vanish from the
# profile, while the call into the allocator, a C library linked as such,
# stays. Every Rust allocation makes exactly one such call (the system
# allocator's shim calls malloc or posix_memalign; MiMalloc calls
# mi_malloc_aligned, mi_zalloc_aligned or mi_realloc_aligned), and so does
# every C library's, so the count is the same whichever global allocator is
# linked and with or without LTO. Calls an allocator makes into its own entry
# points (an aligned allocation falling back to a plain one) are its own
# business and not counted again. Frees are not counted.
ENTRY = {
    # C library
    "malloc", "calloc", "realloc", "posix_memalign", "aligned_alloc", "memalign", "valloc",
    # mimalloc (the binary's global allocator, and its C API)
    "mi_malloc", "mi_zalloc", "mi_calloc", "mi_realloc", "mi_reallocf", "mi_malloc_small",
    "mi_zalloc_small", "mi_malloc_aligned", "mi_zalloc_aligned", "mi_calloc_aligned",
    "mi_realloc_aligned", "mi_malloc_aligned_at", "mi_zalloc_aligned_at", "mi_realloc_aligned_at",
    "mi_heap_malloc", "mi_heap_zalloc", "mi_heap_malloc_aligned", "mi_heap_zalloc_aligned",
    "mi_heap_realloc", "mi_heap_realloc_aligned", "mi_new", "mi_new_aligned",
    # jemalloc as tikv-jemallocator links it
    "_rjem_malloc", "_rjem_mallocx", "_rjem_calloc", "_rjem_realloc", "_rjem_rallocx",
    "_rjem_posix_memalign", "_rjem_aligned_alloc",
}
INTERNAL_PREFIXES = ("mi_", "_mi_", "__libc_", "_int_", "_rjem_", "je_", "tcache_")


def read(path):
    """Self instructions per function name, the file's total instructions,
    and its allocation requests (see ENTRY)."""
    names, costs, total, allocs = {}, {}, 0, 0
    fn, callee, skip_next = "", None, False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
                continue
            m = FN.match(line)
            if m:
                # A name is spelled out once, where its id first appears
                # (as a function or as a callee), then only the id.
                if m.group(3):
                    names[m.group(2)] = m.group(3).strip()
                if m.group(1):
                    callee = names.get(m.group(2), "?")
                else:
                    fn = names.get(m.group(2), "?")
                continue
            if line.startswith("calls="):
                if callee in ENTRY and not (fn in ENTRY or fn.startswith(INTERNAL_PREFIXES)):
                    allocs += int(line.split("=")[1].split()[0])
                callee = None
                # The cost line after a call is the callee's inclusive cost.
                skip_next = True
                continue
            m = COST.match(line)
            if m:
                if skip_next:
                    skip_next = False
                else:
                    costs[fn] = costs.get(fn, 0) + int(m.group(1))
    return costs, total, allocs


def self_costs(path):
    """Self instructions per function name, and the file's total."""
    costs, total, _ = read(path)
    return costs, total


def main(argv):
    n = int(os.environ.get("N", "200"))
    top = int(os.environ.get("TOP", "30"))
    if len(argv) == 3 and argv[1] == "--totals":
        _, total, allocs = read(argv[2])
        print(total, allocs)
        return
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    if len(argv) == 2:
        costs, total = self_costs(argv[1])
        print(f"{total / n:10.0f}  in all (instructions per request)")
        for name, cost in sorted(costs.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{cost / n:10.0f}  {name[:140]}")
        return
    before, before_total = self_costs(argv[1])
    after, after_total = self_costs(argv[2])
    print(f"in all: {before_total / n:.0f} -> {after_total / n:.0f} ({(after_total - before_total) / n:+.0f})")
    moved = [(after.get(k, 0) - before.get(k, 0), k) for k in set(before) | set(after)]
    moved = [m for m in moved if m[0]]
    for delta, name in sorted(moved, key=lambda m: -abs(m[0]))[:top]:
        print(f"{delta / n:+10.0f}  {name[:140]}")


if __name__ == "__main__":
    main(sys.argv)
