#!/usr/bin/env python3
"""A flame graph SVG from `perf script` output (stdin) to stdout.

    perf record -e cpu-clock -F 999 -g -p PID -- sleep 10
    perf script | bench/flamegraph.py "title" > graph.svg

Stacks are folded per thread-independent call chain (root at the bottom),
widths are sample counts; frames under 0.1 % are dropped. No dependencies.
"""
import html
import re
import sys
import zlib

MIN_SHARE = 0.001
ROW = 16
WIDTH = 1200


def stacks(lines):
    """Yields one call chain (root first) per sample."""
    chain = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if chain:
                yield list(reversed(chain))
            chain = []
            continue
        if line[0] in " \t":
            parts = line.strip().split(None, 1)
            if len(parts) == 2:
                name = re.sub(r"\+0x[0-9a-f]+$", "", parts[1].split(" (")[0])
                name = re.sub(r"::h[0-9a-f]{16}$", "", name)
                chain.append(name)
    if chain:
        yield list(reversed(chain))


def tree(chains):
    root = {"n": 0, "c": {}}
    for c in chains:
        node = root
        node["n"] += 1
        for f in c:
            node = node["c"].setdefault(f, {"n": 0, "c": {}})
            node["n"] += 1
    return root


def color(name):
    h = zlib.crc32(name.encode())
    return "rgb(%d,%d,%d)" % (205 + h % 50, 80 + (h >> 8) % 120, 40 + (h >> 16) % 40)


def main():
    title = sys.argv[1] if len(sys.argv) > 1 else "flame graph"
    root = tree(stacks(sys.stdin))
    total = max(root["n"], 1)
    rects = []
    depth_max = [0]

    def walk(node, x, depth):
        for name, child in sorted(node["c"].items()):
            if child["n"] / total >= MIN_SHARE:
                rects.append((name, x, depth, child["n"]))
                depth_max[0] = max(depth_max[0], depth)
                walk(child, x, depth + 1)
            x += child["n"]

    walk(root, 0, 0)
    height = (depth_max[0] + 3) * ROW + 30
    out = [
        '<?xml version="1.0" standalone="no"?>',
        f'<svg version="1.1" width="{WIDTH}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
        'font-family="monospace" font-size="11">',
        f'<text x="10" y="18" font-size="14">{html.escape(title)} ({total} samples)</text>',
    ]
    scale = (WIDTH - 20) / total
    for name, x, depth, n in rects:
        px, w = 10 + x * scale, n * scale
        y = height - (depth + 1) * ROW - 4
        label = html.escape(name)
        pct = 100.0 * n / total
        out.append(
            f'<g><title>{label} ({n} samples, {pct:.2f}%)</title>'
            f'<rect x="{px:.1f}" y="{y}" width="{max(w - 0.5, 0.1):.1f}" height="{ROW - 1}" fill="{color(name)}"/>'
        )
        chars = int(w / 7)
        if chars >= 3:
            text = name if len(name) <= chars else name[: chars - 2] + ".."
            out.append(f'<text x="{px + 2:.1f}" y="{y + 12}">{html.escape(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
