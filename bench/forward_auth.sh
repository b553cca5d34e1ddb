#!/usr/bin/env bash
# Forward-auth benchmark: what nginx's auth_request to Portcullis costs, against
# the best case of every forward-auth stack.
#
#   bench/forward_auth.sh     # builds, installs wrk/nginx if missing, runs (~3 minutes)
#
# The same small GET (the echo app's /small, "ok\n") with a two-factor session
# cookie, with wrk at 16 and 128 connections, against:
#   nginx       nginx as a plain reverse proxy to the echo app (no auth at all);
#   ideal       nginx with auth_request to an ideal auth service that answers 204
#               at once (an nginx `return 204` server, over the same kind of pooled
#               HTTP/1.1 connection), then to the echo app;
#   fwdauth     nginx with auth_request to Portcullis's {prefix}/authz/auth-request
#               (the README's nginx recipe: identity headers copied, cookie handed on),
#               then to the echo app;
#   inline      Portcullis itself as the proxy, with the same session.
# Prints requests/second, p50 and p99 (medians of RUNS interleaved runs of
# DURATION seconds), the ratios to `ideal`, and the CPU time per request of the
# processes on the request path (nginx workers, Portcullis). Goal: fwdauth at
# least 0.9x ideal's throughput with p99 within 1.2x.
#
# Environment: DURATION (5), RUNS (3), CONNS ("16 128"), BASE_PORT (24180), KEEP=1,
# NO_BUILD=1, PORTCULLIS_BIN and ECHO_BIN (see bench/lib.sh); PROFILE=1 records
# where Portcullis spends its time on the auth_request path (perf) instead.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=${CONNS:-"16 128"}
FA_PORT=$((BASE_PORT + 5))      # nginx + auth_request -> Portcullis
IDEAL_PORT=$((BASE_PORT + 6))   # nginx + auth_request -> the ideal service
IDEAL_SVC_PORT=$((BASE_PORT + 7))  # the ideal service: return 204

# Portcullis must believe nginx (127.0.0.1) and serve the endpoints. The lines
# land in [server]; the [forward_auth] table after them is a table of its own.
SERVER_EXTRA='trusted_proxies = ["127.0.0.1/32"]

[forward_auth]
enabled = true'

start_fa_nginx() {
  local p
  for p in "$FA_PORT" "$IDEAL_PORT" "$IDEAL_SVC_PORT"; do
    port_free "$p" || die "port $p is in use (set BASE_PORT)"
  done
  mkdir -p "$WORK/fa"
  local user=""
  [ "$(id -u)" = 0 ] && user="user root;"
  # One location block per front, identical but for the auth upstream: the
  # directives of the README's recipe (identity headers and cookie handed on).
  front() { # port auth-upstream auth-uri
    cat <<EOF
  server {
    listen 127.0.0.1:$1;
    location = /_portcullis_auth {
      internal;
      proxy_pass http://$2$3;
      proxy_pass_request_body off;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Original-URL \$scheme://\$http_host\$request_uri;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
    location / {
      auth_request /_portcullis_auth;
      auth_request_set \$portcullis_user \$upstream_http_remote_user;
      auth_request_set \$portcullis_groups \$upstream_http_remote_groups;
      auth_request_set \$portcullis_email \$upstream_http_remote_email;
      auth_request_set \$portcullis_name \$upstream_http_remote_name;
      auth_request_set \$portcullis_cookie \$upstream_http_set_cookie;
      add_header Set-Cookie \$portcullis_cookie;
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Remote-User \$portcullis_user;
      proxy_set_header Remote-Groups \$portcullis_groups;
      proxy_set_header Remote-Email \$portcullis_email;
      proxy_set_header Remote-Name \$portcullis_name;
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
EOF
  }
  cat >"$WORK/fa/nginx.conf" <<EOF
$user
worker_processes auto;
daemon off;
pid $WORK/fa/nginx.pid;
error_log $WORK/fa/error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/fa/access.log combined;
  client_body_temp_path $WORK/fa/body;
  proxy_temp_path $WORK/fa/proxy;
  fastcgi_temp_path $WORK/fa/fastcgi;
  uwsgi_temp_path $WORK/fa/uwsgi;
  scgi_temp_path $WORK/fa/scgi;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 1024; }
  upstream portcullis { server 127.0.0.1:$GW_PORT; keepalive 1024; }
  upstream ideal { server 127.0.0.1:$IDEAL_SVC_PORT; keepalive 1024; }
$(front "$FA_PORT" portcullis /_portcullis/authz/auth-request)
$(front "$IDEAL_PORT" ideal /auth)
  server {
    listen 127.0.0.1:$IDEAL_SVC_PORT;
    access_log off;
    location / { return 204; }
  }
}
EOF
  "$NGINX" -p "$WORK/fa" -c "$WORK/fa/nginx.conf" >"$WORK/fa/stdout.log" 2>&1 &
  FA_NGINX_PID=$!
  PIDS+=("$FA_NGINX_PID")
  wait_http "http://127.0.0.1:$IDEAL_PORT$PATH_SMALL"
  wait_http "http://127.0.0.1:$FA_PORT$PATH_SMALL" "$BYPASS_HOST"
}

fa_workers() { pgrep -P "$FA_NGINX_PID" | tr '\n' ' '; }

ensure_tools
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream
start_nginx
start_gateway
signin
start_fa_nginx
[ "$SESSION_LEVEL" = 2 ] || die "the bench needs a two-factor session (TOTP sign-in failed)"
# The session must pass through nginx's auth_request too (else we would
# measure 401s), and the app must get the identity.
got=$(curl -sS -H "Host: $AUTH_HOST" -H "Cookie: portcullis_session=$SESSION" "http://127.0.0.1:$FA_PORT$PATH_SMALL")
[ "$got" = ok ] || die "the session does not pass nginx + auth_request: $got"
got=$(curl -sS -o /dev/null -w '%{http_code}' -H "Host: $AUTH_HOST" "http://127.0.0.1:$FA_PORT$PATH_SMALL")
[ "$got" = 401 ] || die "without a session nginx + auth_request answered $got, not 401"
machine_summary

# PROFILE=1: where Portcullis spends its time answering auth_request (perf),
# instead of the table.
if [ "${PROFILE:-0}" = 1 ]; then
  command -v perf >/dev/null || die "PROFILE=1 needs perf (apt-get install linux-perf)"
  wrk -t2 -c16 -d20s -H "Host: $AUTH_HOST" -H "Cookie: portcullis_session=$SESSION" \
    "http://127.0.0.1:$FA_PORT$PATH_SMALL" >"$WORK/profile-wrk.txt" &
  wrk_pid=$!
  sleep 3
  perf record -F 999 -g -o "$WORK/perf.data" -p "$GW_PID" -- sleep 12 >"$WORK/perf-record.log" 2>&1 || { cat "$WORK/perf-record.log" >&2; die "perf record failed"; }
  wait "$wrk_pid"
  perf report -i "$WORK/perf.data" --stdio --no-children -g none --sort dso,symbol --percent-limit 0.7 2>/dev/null | grep -v "^$" | head -80
  grep -i 'requests/sec' "$WORK/profile-wrk.txt"
  exit 0
fi
log "forward-auth: $RUNS runs x ${DURATION}s per cell, connections: $CONNS"

TARGETS=(nginx ideal fwdauth inline)

target_args() {
  case $1 in
    nginx) T_URL="http://127.0.0.1:$NGINX_PORT$PATH_SMALL"; T_PIDS="$(nginx_workers)" ;;
    ideal) T_URL="http://127.0.0.1:$IDEAL_PORT$PATH_SMALL"; T_PIDS="$(fa_workers)" ;;
    fwdauth) T_URL="http://127.0.0.1:$FA_PORT$PATH_SMALL"; T_PIDS="$(fa_workers) $GW_PID" ;;
    inline) T_URL="http://127.0.0.1:$GW_PORT$PATH_SMALL"; T_PIDS="$GW_PID" ;;
  esac
}

saved=$DURATION
DURATION=2
for t in "${TARGETS[@]}"; do
  target_args "$t"
  # shellcheck disable=SC2086
  wrk_run 128 "$T_URL" "$AUTH_HOST" "$SESSION" $T_PIDS >/dev/null
done
DURATION=$saved

declare -A RPS P50 P99 CPU
for run in $(seq "$RUNS"); do
  # A fresh cookie per run (a run lasts well under a minute), so no request
  # pays for a sliding re-issue, which a browser would not cause.
  signin
  for c in $CONNS; do
    for t in "${TARGETS[@]}"; do
      target_args "$t"
      # shellcheck disable=SC2086
      read -r rps p50 p99 cpu < <(wrk_run "$c" "$T_URL" "$AUTH_HOST" "$SESSION" $T_PIDS)
      RPS[$t,$c]+="$rps "
      P50[$t,$c]+="$p50 "
      P99[$t,$c]+="$p99 "
      CPU[$t,$c]+="$cpu "
      log "run $run: $t at $c connections: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu}us CPU/request"
    done
  done
done

label() {
  case $1 in
    nginx) echo "nginx (no auth)" ;;
    ideal) echo "nginx + ideal 204" ;;
    fwdauth) echo "nginx + portcullis" ;;
    inline) echo "portcullis inline" ;;
  esac
}

echo
printf '%-20s %5s %9s %8s %8s %10s %10s %10s\n' target conns req/s p50_us p99_us rps/ideal p99/ideal cpu_us/req
for c in $CONNS; do
  # shellcheck disable=SC2086
  i_rps=$(median ${RPS[ideal,$c]}); i_p99=$(median ${P99[ideal,$c]})
  for t in "${TARGETS[@]}"; do
    # shellcheck disable=SC2086
    rps=$(median ${RPS[$t,$c]}); p50=$(median ${P50[$t,$c]}); p99=$(median ${P99[$t,$c]}); cpu=$(median ${CPU[$t,$c]})
    awk -v l="$(label "$t")" -v c="$c" -v r="$rps" -v p50="$p50" -v p99="$p99" -v ir="$i_rps" -v ip="$i_p99" -v cpu="$cpu" \
      'BEGIN { printf "%-20s %5d %9d %8d %8d %10.2f %10.2f %10.1f\n", l, c, r, p50, p99, r / ir, p99 / ip, cpu }'
  done
done
echo
echo "goal: nginx + portcullis >= 0.90x the ideal service's req/s, p99 <= 1.20x"
echo "cpu_us/req: nginx workers (+ Portcullis for fwdauth) per request; the echo app's CPU is not counted"
echo "medians of $RUNS runs x ${DURATION}s; wrk -t2; load now: $(cut -d' ' -f1-3 /proc/loadavg)"
