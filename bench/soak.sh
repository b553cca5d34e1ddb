#!/usr/bin/env bash
# Soak under hostile load: does a signed-in client keep being served while
# thousands of idle connections sit on the gateway and a flood of oversized
# sign-ins hits the authentication API, and does the gateway give everything
# back afterwards?
#
#   bench/soak.sh             # builds, installs wrk if missing, runs (~1 minute)
#
# Phases, everything on 127.0.0.1 and bounded in count and time:
#   before  the signed-in GET alone (wrk, AUTH_CONNS connections, DURATION s);
#   during  IDLE_CONNS prior-knowledge HTTP/2 connections that sent one request
#           and then stay idle answering PINGs (bench/idle_conns.py), plus
#           FLOOD_CONNS connections posting sign-ins with a 1 MB username
#           (bench/soak_flood.lua) for DURATION + 2 s, while the signed-in GET
#           is measured again;
#   after   once the gateway has closed the idle connections (server.idle_timeout,
#           IDLE_TIMEOUT here) and the flood is over, the signed-in GET again.
# Prints, per phase, the signed-in throughput and p99, and the gateway's RSS,
# peak RSS and open descriptors (/proc/PID/status VmRSS/VmHWM, /proc/PID/fd).
#
# Environment: IDLE_CONNS (2000), IDLE_TIMEOUT ("15s"), FLOOD_CONNS (4),
# FLOOD_USERNAME_BYTES (1048576), AUTH_CONNS (16), DURATION (5), BASE_PORT
# (24180), STORE (memory|sqlite), KEEP=1, NO_BUILD=1, PORTCULLIS_BIN, ECHO_BIN.

IDLE_CONNS=${IDLE_CONNS:-2000}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-15s}
FLOOD_CONNS=${FLOOD_CONNS:-4}
AUTH_CONNS=${AUTH_CONNS:-16}
export FLOOD_USERNAME_BYTES=${FLOOD_USERNAME_BYTES:-1048576}
SERVER_EXTRA="idle_timeout = \"$IDLE_TIMEOUT\""

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$IDLE_CONNS" -ge 1 ] && [ "$IDLE_CONNS" -le 20000 ] || die "IDLE_CONNS must be 1..20000"
[ "$FLOOD_CONNS" -ge 1 ] && [ "$FLOOD_CONNS" -le 64 ] || die "FLOOD_CONNS must be 1..64"
idle_secs=${IDLE_TIMEOUT%s}
[[ "$idle_secs" =~ ^[0-9]+$ ]] && [ "$idle_secs" -le 120 ] || die "IDLE_TIMEOUT must be whole seconds, at most 120s"
# The idle helper needs a descriptor per connection.
[ "$(ulimit -n)" -gt $((IDLE_CONNS + 64)) ] || ulimit -n $((IDLE_CONNS + 256)) 2>/dev/null \
  || die "raise the open-file limit (ulimit -n) above $((IDLE_CONNS + 64))"

ensure_tools
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream
start_gateway
signin
machine_summary

URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"
fds() { ls "/proc/$GW_PID/fd" | wc -l; }
declare -A RSS HWM FDS RPS P99
snap() { # phase
  RSS[$1]=$(rss_mb "$GW_PID")
  HWM[$1]=$(peak_rss_mb "$GW_PID")
  FDS[$1]=$(fds)
  log "$1: RSS ${RSS[$1]} MB, peak ${HWM[$1]} MB, ${FDS[$1]} open descriptors"
}
measure() { # phase (with the current SESSION)
  local rps p99
  read -r rps _ p99 _ < <(wrk_run "$AUTH_CONNS" "$URL" "$AUTH_HOST" "$SESSION" "$GW_PID")
  RPS[$1]=$rps
  P99[$1]=$p99
  log "$1: signed-in GET $rps req/s, p99 ${p99}us"
}

# Warm-up.
saved=$DURATION
DURATION=2
wrk_run "$AUTH_CONNS" "$URL" "$AUTH_HOST" "$SESSION" "$GW_PID" >/dev/null
DURATION=$saved

snap before
measure before
# A fresh session for the loaded phase, signed in before the load starts (a
# second TOTP sign-in may wait for the next 30-second step).
signin

# Idle HTTP/2 connections; held at most until they must have been closed.
hold=$((idle_secs * 2 + DURATION + 30))
timeout $((hold + 10)) python3 "$BENCH_DIR/idle_conns.py" "$GW_PORT" "$IDLE_CONNS" "$hold" \
  "$BYPASS_HOST" "$PATH_SMALL" >"$WORK/idle.out" 2>&1 &
idle_pid=$!
PIDS+=("$idle_pid")
for _ in $(seq 300); do
  grep -q "SUMMARY" "$WORK/idle.out" && break
  last=$(grep '^t=' "$WORK/idle.out" | tail -1 || true)
  [[ "$last" =~ answered=([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -ge "$IDLE_CONNS" ] && break
  sleep 0.1
done
log "idle connections: $(grep '^t=' "$WORK/idle.out" | tail -1 || true)"
snap idle

# The flood, then the signed-in client again while both go on.
timeout $((DURATION + 30)) wrk -t1 -c"$FLOOD_CONNS" -d$((DURATION + 2))s --timeout 10s \
  -s "$BENCH_DIR/soak_flood.lua" -H "Host: $AUTH_HOST" \
  "http://127.0.0.1:$GW_PORT/_portcullis/api/v1/authn" >"$WORK/flood.out" 2>&1 &
flood=$!
PIDS+=("$flood")
sleep 1
snap during
measure during
wait "$flood" || true
snap flood_end
log "flood: $(grep '^FLOOD' "$WORK/flood.out" || tail -3 "$WORK/flood.out")"

# Wait for the gateway to close the idle connections (bounded by the helper's hold).
wait "$idle_pid" || true
log "idle connections: $(grep '^SUMMARY' "$WORK/idle.out" || tail -3 "$WORK/idle.out")"
signin
snap after
measure after

echo
printf '%-10s %10s %9s %9s %9s %6s\n' phase "req/s" p99_us rss_mb peak_mb fds
for phase in before idle during flood_end after; do
  printf '%-10s %10s %9s %9s %9s %6s\n' "$phase" "${RPS[$phase]:--}" "${P99[$phase]:--}" "${RSS[$phase]}" "${HWM[$phase]}" "${FDS[$phase]}"
done
echo "idle: the idle connections open, before the flood; flood_end: as the flood ends (idle connections still open)"
echo
echo "signed-in GET: wrk $AUTH_CONNS connections x ${DURATION}s per phase (session level $SESSION_LEVEL)"
awk -v b="${RPS[before]}" -v d="${RPS[during]}" -v a="${RPS[after]}" \
  'BEGIN { printf "throughput during/before: %.2f, after/before: %.2f\n", d / b, a / b }'
echo "idle HTTP/2 connections ($IDLE_CONNS, server.idle_timeout = $IDLE_TIMEOUT): $(grep '^SUMMARY' "$WORK/idle.out" | cut -d' ' -f2-)"
echo "oversized sign-ins ($FLOOD_CONNS conns, ${FLOOD_USERNAME_BYTES}-byte usernames, $((DURATION + 2))s): $(grep '^FLOOD' "$WORK/flood.out" | cut -d' ' -f2-)"
echo "load now: $(cut -d' ' -f1-3 /proc/loadavg)"
