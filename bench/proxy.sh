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

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=${CONNS:-"1 16 128"}

ensure_tools
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream
start_nginx
start_gateway
signin
START_RSS=$(rss_mb "$GW_PID")
machine_summary
log "session level $SESSION_LEVEL (host $AUTH_HOST); $RUNS runs x ${DURATION}s per cell"

TARGETS=(direct nginx bypass session)

target_args() { # target -> "url host cookie pids..." via globals
  case $1 in
    direct) T_URL="http://127.0.0.1:$UP_PORT$PATH_SMALL"; T_HOST="127.0.0.1:$UP_PORT"; T_COOKIE=""; T_PIDS="$UP_PID" ;;
    nginx) T_URL="http://127.0.0.1:$NGINX_PORT$PATH_SMALL"; T_HOST="127.0.0.1:$NGINX_PORT"; T_COOKIE=""; T_PIDS="$(nginx_workers)" ;;
    bypass) T_URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"; T_HOST=$BYPASS_HOST; T_COOKIE=""; T_PIDS="$GW_PID" ;;
    session) T_URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"; T_HOST=$AUTH_HOST; T_COOKIE=$SESSION; T_PIDS="$GW_PID" ;;
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
echo "cpu_us/req: CPU time of the measured process (upstream for direct, nginx workers, the gateway) per request"
echo "medians of $RUNS runs x ${DURATION}s; wrk -t2 (-t1 at 1 connection); load now: $(cut -d' ' -f1-3 /proc/loadavg)"
