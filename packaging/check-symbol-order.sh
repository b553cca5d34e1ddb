#!/usr/bin/env bash
# Checks that a release binary has the functions of packaging/symbol-order.txt
# packed side by side (build.rs): nearly all of the listed names are in its
# symbol table (the list goes stale when the dependencies or our functions
# change: bench/order.sh writes it anew) and the ones found lie together, not
# spread over the text; and that its relative relocations are packed (DT_RELR).
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
# Each function start-up runs that the list no longer names lands somewhere
# in the 16 MB text, and the kernel maps the 64 KB around it: 90 stale names
# (97 % matching) cost 1.8 MB after start-up (bench/results/README.md,
# "Sixteenth round"). Hence 99 %, not a looser bound.
if [ $((found * 100)) -lt $((listed * 99)) ]; then
  echo "symbol order: fewer than 99 % of the names match ($((listed - found)) missing): $order is stale (a dependency or a function of ours changed); run bench/order.sh" >&2
  exit 1
fi
# Packed: alignment padding only (functions are 16-byte aligned). Unpacked, the
# same functions spread over most of the 16 MB text.
if [ $((span * 2)) -gt $((size * 3)) ]; then
  echo "symbol order: the listed functions are spread out: the link did not use $order (see build.rs)" >&2
  exit 1
fi
# Packed relative relocations (build.rs): a `.relr.dyn` section, and a
# classic `.rela.dyn` table of a few KB at most instead of about 830 KB.
command -v readelf >/dev/null || { echo "relocations: readelf is missing (binutils)" >&2; exit 1; }
# Section lines read "[ 9] .rela.dyn RELA address offset size ...".
rela=$(readelf -SW "$bin" | awk '{ sub(/^.*\] */, "") } $1 == ".rela.dyn" { print strtonum("0x" $5) }')
if ! readelf -SW "$bin" | grep -q '\.relr\.dyn' || [ "${rela:-0}" -gt 65536 ]; then
  echo "relocations: not packed (no .relr.dyn, or .rela.dyn of ${rela:-0} bytes): the link did not use -z pack-relative-relocs (see build.rs)" >&2
  exit 1
fi
echo "relocations: packed (.rela.dyn $((${rela:-0} / 1024)) KiB)"
