#!/usr/bin/env bash
# Load benchmark: the gateway's cost against nginx and a direct connection.
#
#   bench/proxy.sh            # builds, installs wrk/nginx if missing, runs (~4 minutes)
#
# The same small GET (the echo app's /small, "ok\n") with wrk at 1, 16 and 128
# connections against: the upstream directly; nginx as a plain reverse proxy;
# Portcullis on a bypass rule; Portcullis with a valid session cookie (two
# factors when the gateway offers TOTP, else one). Prints requests/second, p50
# and p99 latency (medians of RUNS runs of DURATION seconds, interleaved so
# noise spreads evenly), ratios to nginx and to direct, the proxy's CPU time
# per request and the gateway's peak RSS. Everything listens on 127.0.0.1.
#
# Environment: DURATION (5), RUNS (3), CONNS ("1 16 128"), BASE_PORT (24180),
# STORE (memory|sqlite), KEEP=1 keeps configs and logs, NO_BUILD=1 skips cargo,
# NGINX_LOG_BUFFER=64k buffers nginx's access log (the gateway batches its own),
# PORTCULLIS_BIN and ECHO_BIN run other builds (before/after comparisons).
# BASELINE_BIN=path runs a second gateway from that binary (an earlier build) with
# the same config beside the first, and measures its bypass and session routes in
# the same interleaved runs: before/after side by side in one run, as rows
# `before bypass` and `before session`.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=${CONNS:-"1 16 128"}

ensure_tools
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream
start_nginx
start_gateway
signin
START_RSS=$(rss_mb "$GW_PID")

# The baseline gateway: its own work folder and ports; `as_baseline cmd` runs a
# command with the globals pointing at it.
if [ -n "${BASELINE_BIN:-}" ]; then
  [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
  B_WORK="$WORK/baseline"; mkdir -p "$B_WORK"
  B_PORT=$((BASE_PORT + 13)); B_ADMIN=$((BASE_PORT + 14))
  as_baseline() {
    local s_bin=$PORTCULLIS s_work=$WORK s_port=$GW_PORT s_admin=$ADMIN_PORT s_pid=$GW_PID
    local s_pw=$PASSWORD s_session=$SESSION s_level=$SESSION_LEVEL s_host=$AUTH_HOST s_step=$LAST_TOTP_STEP
    PORTCULLIS=$BASELINE_BIN WORK=$B_WORK GW_PORT=$B_PORT ADMIN_PORT=$B_ADMIN
    GW_PID=${B_PID:-} PASSWORD=${B_PASSWORD:-} SESSION=${B_SESSION:-} LAST_TOTP_STEP=${B_STEP:-0}
    "$@"
    B_PID=$GW_PID B_PASSWORD=$PASSWORD B_SESSION=$SESSION B_STEP=$LAST_TOTP_STEP
    PORTCULLIS=$s_bin WORK=$s_work GW_PORT=$s_port ADMIN_PORT=$s_admin GW_PID=$s_pid
    PASSWORD=$s_pw SESSION=$s_session SESSION_LEVEL=$s_level AUTH_HOST=$s_host LAST_TOTP_STEP=$s_step
  }
  as_baseline start_gateway
  as_baseline signin
  B_START_RSS=$(rss_mb "$B_PID")
fi
machine_summary
log "session level $SESSION_LEVEL (host $AUTH_HOST); $RUNS runs x ${DURATION}s per cell"

TARGETS=(direct nginx bypass session)
[ -n "${BASELINE_BIN:-}" ] && TARGETS+=(b_bypass b_session)

target_args() { # target -> "url host cookie pids..." via globals
  case $1 in
    direct) T_URL="http://127.0.0.1:$UP_PORT$PATH_SMALL"; T_HOST="127.0.0.1:$UP_PORT"; T_COOKIE=""; T_PIDS="$UP_PID" ;;
    nginx) T_URL="http://127.0.0.1:$NGINX_PORT$PATH_SMALL"; T_HOST="127.0.0.1:$NGINX_PORT"; T_COOKIE=""; T_PIDS="$(nginx_workers)" ;;
    bypass) T_URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"; T_HOST=$BYPASS_HOST; T_COOKIE=""; T_PIDS="$GW_PID" ;;
    session) T_URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"; T_HOST=$AUTH_HOST; T_COOKIE=$SESSION; T_PIDS="$GW_PID" ;;
    b_bypass) T_URL="http://127.0.0.1:$B_PORT$PATH_SMALL"; T_HOST=$BYPASS_HOST; T_COOKIE=""; T_PIDS="$B_PID" ;;
    b_session) T_URL="http://127.0.0.1:$B_PORT$PATH_SMALL"; T_HOST=$AUTH_HOST; T_COOKIE=$B_SESSION; T_PIDS="$B_PID" ;;
  esac
}

# Warm-up: fill connection pools and caches on every path.
saved=$DURATION
DURATION=2
for t in "${TARGETS[@]}"; do
  target_args "$t"
  # shellcheck disable=SC2086
  wrk_run 128 "$T_URL" "$T_HOST" "$T_COOKIE" $T_PIDS >/dev/null
done
DURATION=$saved

declare -A RPS P50 P99 CPU
for run in $(seq "$RUNS"); do
  for c in $CONNS; do
    for t in "${TARGETS[@]}"; do
      # A fresh sign-in before each session run: a cookie older than a minute
      # would be re-issued on every request, which a browser would not cause.
      [ "$t" = session ] && signin
      [ "$t" = b_session ] && as_baseline signin
      target_args "$t"
      # shellcheck disable=SC2086
      read -r rps p50 p99 cpu < <(wrk_run "$c" "$T_URL" "$T_HOST" "$T_COOKIE" $T_PIDS)
      RPS[$t,$c]+="$rps "
      P50[$t,$c]+="$p50 "
      P99[$t,$c]+="$p99 "
      CPU[$t,$c]+="$cpu "
      log "run $run: $t at $c connections: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu}us CPU/request"
    done
  done
done
GW_RSS=$(peak_rss_mb "$GW_PID")
NGINX_RSS=$(for p in $NGINX_PID $(nginx_workers); do awk '/^VmHWM/ { print $2 }' "/proc/$p/status"; done | awk '{ s += $1 } END { printf "%.1f", s / 1024 }')

label() {
  case $1 in
    direct) echo "direct (upstream)" ;;
    nginx) echo "nginx" ;;
    bypass) echo "portcullis bypass" ;;
    session) echo "portcullis ${SESSION_LEVEL}FA session" ;;
    b_bypass) echo "before bypass" ;;
    b_session) echo "before ${SESSION_LEVEL}FA session" ;;
  esac
}

echo
printf '%-24s %5s %9s %8s %8s %8s %8s %8s %8s %10s\n' target conns req/s p50_us p99_us rps/ngx p99/ngx rps/dir p99/dir cpu_us/req
for c in $CONNS; do
  # shellcheck disable=SC2086
  n_rps=$(median ${RPS[nginx,$c]}); n_p99=$(median ${P99[nginx,$c]})
  # shellcheck disable=SC2086
  d_rps=$(median ${RPS[direct,$c]}); d_p99=$(median ${P99[direct,$c]})
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    rps=$(median ${RPS[$t,$c]}); p50=$(median ${P50[$t,$c]}); p99=$(median ${P99[$t,$c]}); cpu=$(median ${CPU[$t,$c]})
    awk -v l="$(label "$t")" -v c="$c" -v r="$rps" -v p50="$p50" -v p99="$p99" -v nr="$n_rps" -v np="$n_p99" \
      -v dr="$d_rps" -v dp="$d_p99" -v cpu="$cpu" \
      'BEGIN { printf "%-24s %5d %9d %8d %8d %8.2f %8.2f %8.2f %8.2f %10.1f\n", l, c, r, p50, p99, r / nr, p99 / np, r / dr, p99 / dp, cpu }'
  done
done
echo
echo "peak RSS (VmHWM) after the 128-connection runs: portcullis ${GW_RSS} MB (${START_RSS} MB after start-up and one sign-in); nginx master+workers ${NGINX_RSS} MB"
[ -n "${BASELINE_BIN:-}" ] && echo "peak RSS (VmHWM) of the baseline ($BASELINE_BIN): $(peak_rss_mb "$B_PID") MB (${B_START_RSS} MB after start-up and one sign-in)"
echo "cpu_us/req: CPU time of the measured process (upstream for direct, nginx workers, the gateway) per request"
echo "medians of $RUNS runs x ${DURATION}s; wrk -t2 (-t1 at 1 connection); load now: $(cut -d' ' -f1-3 /proc/loadavg)"
