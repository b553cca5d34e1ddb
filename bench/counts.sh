#!/usr/bin/env bash
# Load-independent costs per request of the gateway: CPU instructions and heap
# allocations (valgrind callgrind) and syscalls (strace -c), for the bypass
# route, for a signed-in request, for a forward-auth check (nginx's
# `auth_request` call to `/_portcullis/authz/auth-request` with the same
# session: no upstream) and for the bypass route with a path of a usual
# length (PATH_LONG, 43 bytes; the echo app answers it with a page instead
# of "ok"), over a fixed number of kept-alive requests from one
# client. Unlike req/s on a shared machine, these counts do
# not move with what else runs, so before/after comparisons hold across runs.
#
#   bench/counts.sh                  # N=200 requests per measurement
#
# Environment: N (200), WARM (50 warm-up requests), FLAME_DIR (also write flame
# graphs there), NO_BUILD=1, PORTCULLIS_BIN / ECHO_BIN (other builds), BASE_PORT
# (24280), KEEP=1 (keep the work directory: its callgrind.<route> files are read
# by bench/callgrind_self.py, self costs per function or their moves between two
# builds). Allocations are allocation requests (malloc, calloc,
# realloc and their kin): calls into the linked allocator (the C library's,
# mimalloc or jemalloc) from outside it, so they count the same whichever
# global allocator is linked and with or without LTO (see bench/callgrind_self.py).

BASE_PORT=${BASE_PORT:-24280}
# Forward-auth on, and only 127.0.0.2 trusted to ask (the forward-auth calls
# come from there): the other routes' requests, from 127.0.0.1, are a direct
# client's as before (one trusted-proxy check more than with the setting off).
SERVER_EXTRA='trusted_proxies = ["127.0.0.2/32"]

[forward_auth]
enabled = true'
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N=${N:-200}
WARM=${WARM:-50}

command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
command -v strace >/dev/null || die "strace is needed (apt-get install strace)"
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream

# N kept-alive GETs from one curl process. The session route signs in just
# before it is measured: a cookie older than a minute is re-issued on every
# request (as in bench/proxy.sh, which signs in before each run).
# With AUTHZ=1, the same request as nginx's auth_request sends it (the
# forward_auth.sh recipe: Host is the upstream block's name).
requests() { # host [cookie] [count]; REQ_PATH: another path than PATH_SMALL
  local count=${3:-$N} path=${REQ_PATH:-$PATH_SMALL}
  local args=(-s -H "Host: $1") url="http://127.0.0.1:$GW_PORT$path"
  [ -n "${2:-}" ] && args+=(-H "Cookie: _ga=GA1.2.1234567890.1790000000; portcullis_session=$2; theme=dark")
  if [ "${AUTHZ:-0}" = 1 ]; then
    args=(-s --interface 127.0.0.2 -H "Host: portcullis" -H "X-Original-Method: GET" -H "X-Original-URL: http://$1$path"
      -H "X-Forwarded-For: 127.0.0.1" -H "X-Forwarded-Proto: http" "${args[@]:3}")
    url="http://127.0.0.1:$GW_PORT/_portcullis/authz/auth-request"
  fi
  local urls=() i
  for ((i = 0; i < count; i++)); do urls+=("$url"); done
  curl "${args[@]}" "${urls[@]}" >/dev/null
}

# Callgrind totals of the events since the last zeroing: "Ir allocs" (how
# allocations are counted: bench/callgrind_self.py).
callgrind_totals() { # out-file
  python3 "$(dirname "${BASH_SOURCE[0]}")/callgrind_self.py" --totals "$1"
}

measure_callgrind() { # label host [cookie]
  local out="$WORK/callgrind.$1"
  rm -f "$WORK"/callgrind.out.*
  case "$1" in bypass | long) ;; *) signin; set -- "$1" "$2" "$SESSION" ;; esac
  requests "$2" "${3:-}" "$WARM" # warm-up
  callgrind_control -z "$GW_PID" >/dev/null
  requests "$2" "${3:-}"
  callgrind_control -d "$GW_PID" >/dev/null
  sleep 1
  local f
  f=$(ls -t "$WORK"/callgrind.out.* | head -1)
  cp "$f" "$out"
  read -r ir allocs < <(callgrind_totals "$out")
  awk -v l="$1" -v ir="$ir" -v a="$allocs" -v n="$N" \
    'BEGIN { printf "%-10s instructions/request %8.0f   allocations/request %6.1f\n", l, ir / n, a / n }'
}

measure_strace() { # label host [cookie]
  local out="$WORK/strace.$1"
  [ "$1" != bypass ] && { signin; set -- "$1" "$2" "$SESSION"; }
  requests "$2" "${3:-}" "$WARM" # warm-up
  strace -c -f -p "$GW_PID" -o "$out" 2>/dev/null &
  local st=$!
  sleep 1
  requests "$2" "${3:-}"
  sleep 0.5
  kill -INT "$st"
  wait "$st" 2>/dev/null || true
  awk -v l="$1" -v n="$N" '/ total$/ { printf "%-10s syscalls/request %8.2f\n", l, $4 / n }' "$out"
  grep -E '^ *[0-9]' "$out" | sort -k4 -n -r | head -8 | awk -v n="$N" '{ printf "    %-16s %6.2f/request\n", $NF, $4 / n }'
}

# 1. Under callgrind (slow: start-up and the sign-in's argon2 take a while).
GW_WRAP="valgrind --tool=callgrind --callgrind-out-file=$WORK/callgrind.out.%p --dump-instr=no --collect-jumps=no" \
  WAIT_TRIES=1200 start_gateway
signin
log "callgrind: $N requests per route, session level $SESSION_LEVEL"
measure_callgrind bypass "$BYPASS_HOST"
measure_callgrind session "$AUTH_HOST" "$SESSION"
AUTHZ=1 measure_callgrind authz "$AUTH_HOST"
REQ_PATH=$PATH_LONG measure_callgrind long "$BYPASS_HOST"
kill "$GW_PID"; wait "$GW_PID" 2>/dev/null || true

# 2. Natively under strace.
BASE_PORT=$((BASE_PORT + 10)); GW_PORT=$((BASE_PORT + 3)); ADMIN_PORT=$((BASE_PORT + 4))
: >"$WORK/portcullis.log"
GW_WRAP="" start_gateway
signin
log "strace: $N requests per route"
measure_strace bypass "$BYPASS_HOST"
measure_strace session "$AUTH_HOST" "$SESSION"
AUTHZ=1 measure_strace authz "$AUTH_HOST"
# 3. Flame graphs (FLAME_DIR=dir): perf samples of the gateway under wrk (16 connections).
# The release build keeps no frame pointers, so stacks are unwound from DWARF
# (16 KiB of stack per sample; hardware counters are not needed: cpu-clock).
if [ -n "${FLAME_DIR:-}" ] && command -v perf >/dev/null && command -v wrk >/dev/null; then
  mkdir -p "$FLAME_DIR"
  for route in bypass session; do
    if [ "$route" = bypass ]; then host=$BYPASS_HOST; cookie=""; else host=$AUTH_HOST; cookie=$SESSION; fi
    args=(-t2 -c16 -d8s -H "Host: $host")
    [ -n "$cookie" ] && args+=(-H "Cookie: _ga=GA1.2.1234567890.1790000000; portcullis_session=$cookie; theme=dark")
    wrk "${args[@]}" "http://127.0.0.1:$GW_PORT$PATH_SMALL" >/dev/null &
    w=$!
    sleep 1
    perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$GW_PID" -o "$WORK/perf.$route" -- sleep 5 2>/dev/null || true
    wait "$w" || true
    perf script -i "$WORK/perf.$route" 2>/dev/null \
      | python3 "$BENCH_DIR/flamegraph.py" "portcullis $route, wrk 16 connections" >"$FLAME_DIR/flame-$route.svg"
    log "flame graph: $FLAME_DIR/flame-$route.svg"
  done
fi
echo "commit $(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet || echo +changes); $N kept-alive requests from one client per route"
