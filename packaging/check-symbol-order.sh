#!/usr/bin/env bash
# Checks that a release binary has the functions of packaging/symbol-order.txt
# packed side by side (build.rs): most of the listed names are in its symbol
# table (the list goes stale when the dependencies change: bench/order.sh
# writes it anew) and the ones found lie together, not spread over the text.
#
#   packaging/check-symbol-order.sh [BINARY]   # default: the release build
#
# Exit 0 when packed, 1 otherwise (with the reason). Run by .ci/run on the
# binary `cargo deb` built.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release/portcullis}
order=packaging/symbol-order.txt
[ -f "$bin" ] || { echo "symbol order: no binary at $bin" >&2; exit 1; }
command -v nm >/dev/null || { echo "symbol order: nm is missing (binutils)" >&2; exit 1; }

read -r listed found size span < <(nm -S --defined-only "$bin" | awk '
  NR == FNR { want[$1] = 1; n++; next }
  NF == 4 && ($4 in want) {
    a = strtonum("0x" $1); s = strtonum("0x" $2)
    if (!m || a < lo) lo = a
    if (a + s > hi) hi = a + s
    m++; total += s; delete want[$4]
  }
  END { printf "%d %d %d %d\n", n, m, total, hi - lo }' "$order" -)
echo "symbol order: $found of $listed listed functions in $bin, $((size / 1024)) KiB of code over a span of $((span / 1024)) KiB"
if [ $((found * 10)) -lt $((listed * 9)) ]; then
  echo "symbol order: fewer than 90 % of the names match: $order is stale (a dependency changed?); run bench/order.sh" >&2
  exit 1
fi
# Packed: alignment padding only (functions are 16-byte aligned). Unpacked, the
# same functions spread over most of the 16 MB text.
if [ $((span * 2)) -gt $((size * 3)) ]; then
  echo "symbol order: the listed functions are spread out: the link did not use $order (see build.rs)" >&2
  exit 1
fi
