#!/usr/bin/env bash
# Memory benchmark: the gateway's resident set at each stage of bench/proxy.sh's
# load, then during a login flood.
#
#   bench/memory.sh           # builds, installs wrk if missing, runs (~1 minute)
#
# Stages, in order, on one gateway process: right after start-up; after one
# sign-in (password + TOTP); wrk -t2 -c128 GET /small signed in, then on the
# bypass rule (DURATION seconds each, as bench/proxy.sh); a sign-in right after
# that load (what bench/proxy.sh does before each run: the argon2 work area on
# top of whatever the load left resident); 9 s of quiet (the upstream pool
# closes its idle connections within 5 s) and a sign-in then; then the same
# signed-in load while a second wrk (FLOOD_CONNS connections) sends wrong
# passwords to the authentication API, so every login costs an argon2
# verification. Prints, after each stage, VmRSS, its anonymous part (heap and
# stacks: what the code allocates, not the binary's pages), the stage's own
# peak (VmHWM, reset between stages through /proc/PID/clear_refs) and the
# peak so far; then the split of the final resident set (from
# /proc/PID/smaps_rollup), the thread count, and the signed-in throughput at
# 128 connections during the flood over alone.
#
# Environment: DURATION (5), CONNS (128), FLOOD_CONNS (16), BASE_PORT (24380),
# NO_BUILD=1, PORTCULLIS_BIN / ECHO_BIN (other builds); the gateway inherits the
# environment, so allocator settings (MIMALLOC_*) can be tried without a build.

BASE_PORT=${BASE_PORT:-24380}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=${CONNS:-128}
FLOOD_CONNS=${FLOOD_CONNS:-16}

ensure_tools
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream
start_gateway
machine_summary
# Start-up and hot code side by side (build.rs): how many of the listed
# functions this binary has (a stale list after a dependency change packs less).
order="$REPO/packaging/symbol-order.txt"
if [ -f "$order" ] && command -v nm >/dev/null; then
  nm --defined-only "$PORTCULLIS" | awk 'NR == FNR { want[$1] = 1; n++; next }
    ($3 in want) { m++; delete want[$3] }
    END { printf "symbol order: %d of the %d functions in packaging/symbol-order.txt found in the binary\n", m, n }' "$order" -
fi

kb() { awk -v k="$2" '$1 == k ":" { print $2 }' "$1"; }
mb() { awk -v v="$1" 'BEGIN { printf "%.1f", v / 1024 }'; }
# The peak of each stage alone: writing 5 to clear_refs resets VmHWM to the
# resident set now (Linux); the peak so far is kept here.
PEAK_SO_FAR=0
stage_peak_kb=0
reset_peak() {
  stage_peak_kb=$(kb "/proc/$GW_PID/status" VmHWM)
  [ "$stage_peak_kb" -gt "$PEAK_SO_FAR" ] && PEAK_SO_FAR=$stage_peak_kb
  echo 5 >"/proc/$GW_PID/clear_refs" 2>/dev/null ||
    echo "warning: cannot reset the peak (/proc/$GW_PID/clear_refs): stage peaks are the peak so far" >&2
}
stage() { # label -> one line: VmRSS now, the stage's VmHWM, the peak so far, threads
  local s="/proc/$GW_PID/status" hwm
  hwm=$(kb "$s" VmHWM)
  [ "$hwm" -gt "$PEAK_SO_FAR" ] && PEAK_SO_FAR=$hwm
  printf '%-44s %8s %8s %10s %8s %8s\n' "$1" "$(mb "$(kb "$s" VmRSS)")" "$(mb "$(kb "$s" RssAnon)")" "$(mb "$hwm")" "$(mb "$PEAK_SO_FAR")" "$(kb "$s" Threads)"
  reset_peak
}

URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"
echo
printf '%-44s %8s %8s %10s %8s %8s\n' stage rss_mb anon_mb stage_peak peak_mb threads
stage "started"
signin
stage "one sign-in"
read -r session_rps _ < <(wrk_run "$CONNS" "$URL" "$AUTH_HOST" "$SESSION" "$GW_PID")
stage "wrk $CONNS conns, ${SESSION_LEVEL}FA session"
read -r bypass_rps _ < <(wrk_run "$CONNS" "$URL" "$BYPASS_HOST" "" "$GW_PID")
stage "wrk $CONNS conns, bypass"
# What bench/proxy.sh does between its runs: a sign-in right after a load,
# when the load's memory may not have been given back yet.
signin
stage "a sign-in right after the load"
PEAK_LOAD=$(mb "$PEAK_SO_FAR")
# Quiet: the upstream pool closes connections idle for its pool_idle_timeout
# (4 s, swept every second), and the serving threads give back what that freed.
sleep 9
stage "9 s quiet (idle upstream connections closed)"
signin
stage "a sign-in after the quiet"
timeout $((DURATION + 30)) wrk -t1 -c"$FLOOD_CONNS" -d$((DURATION + 2))s --timeout 10s \
  -s "$BENCH_DIR/login_flood.lua" -H "Host: $TWO_HOST" \
  "http://127.0.0.1:$GW_PORT/_portcullis/api/v1/authn" >"$WORK/flood.out" 2>&1 &
flood=$!
PIDS+=("$flood")
sleep 1 # let the password pool fill up
read -r flooded_rps _ < <(wrk_run "$CONNS" "$URL" "$AUTH_HOST" "$SESSION" "$GW_PID")
wait "$flood" || true
stage "wrk $CONNS conns session + login flood"
PEAK_FLOOD=$(mb "$stage_peak_kb")
logins=$(sed -nE 's/^RESULT requests=([0-9]+).*/\1/p' "$WORK/flood.out")

r="/proc/$GW_PID/smaps_rollup"
echo
echo "final resident set: $(mb "$(kb "$r" Rss)") MB = anonymous (heap, stacks) $(mb "$(kb "$r" Anonymous)") MB" \
  "+ file-backed (the binary, libraries) $(mb $(( $(kb "$r" Rss) - $(kb "$r" Anonymous) ))) MB"
echo "signed-in req/s at $CONNS conns: alone $session_rps, during the flood $flooded_rps" \
  "(ratio $(awk -v a="$session_rps" -v f="$flooded_rps" 'BEGIN { printf "%.2f", f / a }')); bypass $bypass_rps;" \
  "flood: ${logins:-?} logins answered in $((DURATION + 2))s"
echo "peak RSS (VmHWM): through the $CONNS-connection runs and a sign-in after them ${PEAK_LOAD} MB; during the login flood ${PEAK_FLOOD} MB;" \
  "stalled verifications rescued: $(rescues)"
echo "single runs of ${DURATION}s; load now: $(cut -d' ' -f1-3 /proc/loadavg)"
