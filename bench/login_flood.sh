#!/usr/bin/env bash
# Login-flood benchmark: authenticated proxied throughput alone, then while a
# second wrk hammers the password login (argon2) with wrong passwords.
#
#   bench/login_flood.sh      # builds, installs wrk/nginx if missing, runs (~1 minute)
#
# Regulation limits are set very high in the bench config so every flood
# request really costs an argon2 verification instead of a lockout answer.
# Prints the throughput ratio (target >= 0.8), the flood's login rate and the
# gateway's peak RSS, with the password pool's rescues of stalled idle-class
# verifications (moved out of the idle class; where that is refused, run on an
# extra thread, which holds a second 19 MiB argon2 area).
#
# Environment: DURATION (5), RUNS (3), AUTH_CONNS (16), FLOOD_CONNS (16),
# BASE_PORT (24180), STORE (memory|sqlite), KEEP=1, NO_BUILD=1.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

AUTH_CONNS=${AUTH_CONNS:-16}
FLOOD_CONNS=${FLOOD_CONNS:-16}

ensure_tools
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream
start_gateway
signin
machine_summary

URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"
logins() { # result label -> count from the gateway's metrics
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk -v r="$1" '$0 ~ "^portcullis_logins_total" && $0 ~ "result=\"" r "\"" { s += $NF } END { printf "%d", s }'
}

# Warm-up.
saved=$DURATION
DURATION=2
wrk_run "$AUTH_CONNS" "$URL" "$AUTH_HOST" "$SESSION" "$GW_PID" >/dev/null
DURATION=$saved

ALONE=() FLOODED=() ALONE_P99=() FLOODED_P99=() RATES=()
for run in $(seq "$RUNS"); do
  signin
  read -r rps _ p99 _ < <(wrk_run "$AUTH_CONNS" "$URL" "$AUTH_HOST" "$SESSION" "$GW_PID")
  ALONE+=("$rps"); ALONE_P99+=("$p99")
  log "run $run: alone: $rps req/s, p99 ${p99}us"

  signin
  failed_before=$(logins failure); busy_before=$(logins busy)
  timeout $((DURATION + 30)) wrk -t1 -c"$FLOOD_CONNS" -d$((DURATION + 2))s --timeout 10s \
    -s "$BENCH_DIR/login_flood.lua" -H "Host: $AUTH_HOST" \
    "http://127.0.0.1:$GW_PORT/_portcullis/api/v1/authn" >"$WORK/flood.out" 2>&1 &
  flood=$!
  PIDS+=("$flood")
  sleep 1 # let the password pool fill up
  read -r rps _ p99 _ < <(wrk_run "$AUTH_CONNS" "$URL" "$AUTH_HOST" "$SESSION" "$GW_PID")
  wait "$flood" || true
  failed=$(( $(logins failure) - failed_before )); busy=$(( $(logins busy) - busy_before ))
  rate=$(awk -v f="$failed" -v d="$((DURATION + 2))" 'BEGIN { printf "%.1f", f / d }')
  FLOODED+=("$rps"); FLOODED_P99+=("$p99"); RATES+=("$rate")
  log "run $run: flooded: $rps req/s, p99 ${p99}us; flood: $failed wrong passwords verified (${rate}/s), $busy refused as busy"
done

a=$(median "${ALONE[@]}"); f=$(median "${FLOODED[@]}")
ap=$(median "${ALONE_P99[@]}"); fp=$(median "${FLOODED_P99[@]}")
echo
printf '%-34s %9s %8s\n' "authenticated GET, $AUTH_CONNS connections" req/s p99_us
printf '%-34s %9d %8d\n' "alone" "$a" "$ap"
printf '%-34s %9d %8d\n' "during a login flood ($FLOOD_CONNS conns)" "$f" "$fp"
awk -v a="$a" -v f="$f" 'BEGIN { printf "ratio flooded/alone: %.2f (target >= 0.80)\n", f / a }'
echo "peak RSS (VmHWM) of the gateway over the runs: $(peak_rss_mb "$GW_PID") MB; rescued verifications: $(rescues)"
echo "argon2 verifications during the flood: $(median "${RATES[@]}")/s (median); session level $SESSION_LEVEL"
echo "medians of $RUNS runs x ${DURATION}s; load now: $(cut -d' ' -f1-3 /proc/loadavg)"
