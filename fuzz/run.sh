#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each) on a
# copy of its seed corpus; fails on the first crash, panic, leak or timeout.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
# Needs the nightly toolchain and cargo-fuzz 0.13 (`cargo install cargo-fuzz --locked`).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(path_policy session_cookie config_load authn_json)
fi

# A target dir of its own that persists between runs: the nightly,
# instrumented build shares nothing with the stable one.
export CARGO_TARGET_DIR="${PORTCULLIS_FUZZ_TARGET_DIR:-$HOME/.cache/portcullis-fuzz-target}"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: the nightly toolchain is not installed (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi

echo "== building the fuzz targets (nightly, AddressSanitizer, debug assertions on) in $CARGO_TARGET_DIR"
build_log=$(mktemp)
if ! cargo +nightly fuzz build -O >"$build_log" 2>&1; then
  tail -n 60 "$build_log" >&2
  echo "fuzz: the build failed" >&2
  exit 1
fi
tail -n 1 "$build_log"
rm -f "$build_log"

summary=()
status=0
for t in "${targets[@]}"; do
  # Fuzz into a scratch corpus seeded from the repository's, so runs do not
  # grow the committed seeds.
  work=$(mktemp -d)
  cp -r "corpus/$t/." "$work/"
  log="$work.log"
  echo "== fuzzing $t for ${seconds}s ($(ls "corpus/$t" | wc -l) seeds)"
  set +e
  cargo +nightly fuzz run -O "$t" "$work" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || true)
  corpus=$(ls "$work" | wc -l)
  if [ "$rc" -eq 0 ]; then
    line="$t: ok, ${runs:-?} runs in ${seconds}s (${speed:-?}/s), coverage ${cov:-?} edges, corpus $corpus"
  else
    status=1
    line="$t: FAILED (exit $rc) after ${runs:-?} runs; artifact in fuzz/artifacts/$t/"
    grep -E -A2 'panicked at|ERROR: libFuzzer|Test unit written' "$log" | grep -v '^ *[0-9]*: \|^ *at ' | head -n 20 >&2 || true
    tail -n 40 "$log" >&2
  fi
  echo "$line"
  summary+=("$line")
  rm -rf "$work" "$log"
done

echo
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
exit "$status"
