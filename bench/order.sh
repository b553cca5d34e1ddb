#!/usr/bin/env bash
# Writes packaging/symbol-order.txt: the functions the gateway runs at start-up
# and on its common requests, hottest first, for the linker to place side by
# side in release builds (build.rs). The kernel maps a binary's pages around
# each first call, so code spread over the whole text made most of it resident;
# packed, a few MB are (bench/results/README.md, "Twelfth round").
#
#   bench/order.sh            # builds (cargo build --release), ~3 minutes
#
# Runs the release gateway under valgrind's callgrind, once with the memory
# store and once with SQLite: start-up, a sign-in (password + TOTP), the
# bypass, signed-in and forward-auth requests, the login page, a redirect to
# it, the health check and /metrics; then lists every function of the binary
# that ran (mangled names, as the linker sees them), by instructions spent.
# Symbol names change with the dependencies and their features: run this
# again after a change to Cargo.lock or Cargo.toml (`bench/memory.sh` says
# how many of the names the binary still has; unknown names are skipped).
#
# Environment: N (50 requests per route), NO_BUILD=1, PORTCULLIS_BIN (another
# build: it must be a plain `cargo build --release`), BASE_PORT (24480),
# OUT (packaging/symbol-order.txt).

BASE_PORT=${BASE_PORT:-24480}
SERVER_EXTRA='trusted_proxies = ["127.0.0.2/32"]

[forward_auth]
enabled = true'
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N=${N:-50}
OUT=${OUT:-$REPO/packaging/symbol-order.txt}

command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream

requests() { # host [cookie] [authz]
  local args=(-s -H "Host: $1") url="http://127.0.0.1:$GW_PORT$PATH_SMALL" urls=() i
  [ -n "${2:-}" ] && args+=(-H "Cookie: _ga=GA1.2.1234567890.1790000000; portcullis_session=$2; theme=dark")
  if [ -n "${3:-}" ]; then
    args=(-s --interface 127.0.0.2 -H "Host: portcullis" -H "X-Original-Method: GET"
      -H "X-Original-URL: http://$1$PATH_SMALL" -H "X-Forwarded-For: 127.0.0.1"
      -H "X-Forwarded-Proto: http" "${args[@]:3}")
    url="http://127.0.0.1:$GW_PORT/_portcullis/authz/auth-request"
  fi
  for ((i = 0; i < N; i++)); do urls+=("$url"); done
  curl "${args[@]}" "${urls[@]}" >/dev/null
}

profiles=()
for STORE in memory sqlite; do
  log "callgrind: start-up, sign-in and $N requests per route ($STORE store)"
  GW_WRAP="valgrind --tool=callgrind --callgrind-out-file=$WORK/callgrind.$STORE.%p --demangle=no --dump-instr=no --collect-jumps=no" \
    WAIT_TRIES=1200 start_gateway
  signin
  requests "$BYPASS_HOST"
  requests "$AUTH_HOST" "$SESSION"
  requests "$AUTH_HOST" "$SESSION" authz
  requests "$AUTH_HOST"
  curl -s -H "Host: $AUTH_HOST" -H "Accept: text/html" "http://127.0.0.1:$GW_PORT$PATH_SMALL" >/dev/null
  curl -s -H "Host: $AUTH_HOST" "http://127.0.0.1:$GW_PORT/_portcullis/login" >/dev/null
  curl -s "http://127.0.0.1:$GW_PORT/_portcullis/healthz" >/dev/null
  curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" >/dev/null
  kill -TERM "$GW_PID"
  wait "$GW_PID" 2>/dev/null || true
  profiles+=("$(ls -t "$WORK"/callgrind."$STORE".* | head -1)")
  rm -f "$WORK/portcullis.db"*
done

python3 - "$PORTCULLIS" "$OUT" "${profiles[@]}" <<'PY'
import collections, os, re, subprocess, sys
binary, out, profiles = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
# Self cost per function of the binary, per profile. Names are compressed in
# callgrind files: "fn=(12) name" the first time, "fn=(12)" after.
names = []
for path in profiles:
    cost = collections.Counter()
    obs, fns, ob, fn, skip = {}, {}, None, None, False
    for line in open(path, errors="replace"):
        if skip:  # the inclusive cost of a call, not this function's own
            skip = False
            continue
        m = re.match(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            kind, i, name = m.groups()
            table = obs if kind.endswith("ob") else fns
            if name is not None:
                table[i] = name
            if kind == "ob":
                ob = obs.get(i) and os.path.realpath(obs[i])
            elif kind == "fn":
                fn = fns.get(i) if ob == binary else None
            continue
        if line.startswith("calls="):
            skip = True
        elif fn and (line[:1].isdigit() or line[:1] in "+-*"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                # Recursion cycles are named "name'2": the symbol is "name".
                cost[re.sub(r"'\d+$", "", fn)] += int(parts[1])
    # The first profile's functions first (the memory store's), then what the
    # next adds (SQLite's): a gateway that never opens SQLite maps only the
    # front of the list.
    listed = set(names)
    names += [n for n, _ in cost.most_common() if n not in listed]
symbols = set(subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                             check=True).stdout.split())
kept = [n for n in names if n in symbols]
with open(out, "w") as f:
    f.write("".join(n + "\n" for n in kept))
print(f"{out}: {len(kept)} functions ({len(names) - len(kept)} names not in the symbol table left out)")
PY
