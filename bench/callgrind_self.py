#!/usr/bin/env python3
"""Self costs per function from the callgrind files `bench/counts.sh` keeps.

    KEEP=1 bench/counts.sh                       # note the work directory it keeps
    bench/callgrind_self.py DIR/callgrind.session             # top self costs
    bench/callgrind_self.py BEFORE/callgrind.bypass AFTER/callgrind.bypass
                                                  # what moved, function by function

Costs are instructions per request (N, 200 by default, as in counts.sh).
With one file: the TOP (30) functions by self cost. With two: the totals and the
TOP functions whose self cost moved most, either way (after minus before).
Functions are matched by name, so two builds of different code compare as long
as their symbols keep their names (inlining can move a cost from one name to
another: read a pair of opposite moves together).
"""
import os
import re
import sys

COST = re.compile(r"^(?:[+-]?\d+|\*)\s+(\d+)")
FN = re.compile(r"^(c?)fn=\((\d+)\)(?: (.*))?")


def self_costs(path):
    """Self instructions per function name, and the file's total."""
    names, costs, total = {}, {}, 0
    fn, skip_next = "", False
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
                if not m.group(1):
                    fn = names.get(m.group(2), "?")
                continue
            if line.startswith("calls="):
                # The cost line after a call is the callee's inclusive cost.
                skip_next = True
                continue
            m = COST.match(line)
            if m:
                if skip_next:
                    skip_next = False
                else:
                    costs[fn] = costs.get(fn, 0) + int(m.group(1))
    return costs, total


def main(argv):
    n = int(os.environ.get("N", "200"))
    top = int(os.environ.get("TOP", "30"))
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
