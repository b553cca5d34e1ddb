#!/usr/bin/env bash
# Replicas benchmark: signed-in throughput of 1 gateway vs 2 gateways behind
# nginx round-robin, both on one PostgreSQL store, and how many store
# queries a signed-in request costs (it should be none: sessions are checked
# against each replica's in-memory revocation view).
#
#   PG_URL=postgres://postgres@127.0.0.1:5432/test bench/replicas.sh
#
# Both targets go through the same nginx (round-robin, keepalive), so the
# comparison is 1 vs 2 gateway processes with everything else equal. Store
# queries are counted as table scans in the run's own schema
# (pg_stat_user_tables: seq_scan + idx_scan), which includes the replicas'
# background polls; it needs no pg_stat_statements. On a machine with 2
# cores shared by wrk, nginx and the gateways, 2 replicas cannot double the
# throughput: the ratio shows how much of the second core they get.
#
# Environment: PG_URL (required), DURATION (5), RUNS (3), CONNS (32),
# BASE_PORT (24280), KEEP=1, NO_BUILD=1, PORTCULLIS_BIN/ECHO_BIN (binaries).

BASE_PORT=${BASE_PORT:-24280}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PG_URL=${PG_URL:?set PG_URL to a PostgreSQL URL the bench may create a schema in}
CONNS=${CONNS:-32}
GW2_PORT=$((BASE_PORT + 5))
ADMIN2_PORT=$((BASE_PORT + 6))
LB_PORT=$((BASE_PORT + 7))
LB1_PORT=$((BASE_PORT + 8))
SCHEMA="bench_$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
command -v psql >/dev/null || die "psql is needed (apt-get install postgresql-client)"
psql -qAt "$PG_URL" -c "CREATE SCHEMA $SCHEMA" >/dev/null
drop_schema() { psql -qAt "$PG_URL" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true; }
trap 'cleanup; drop_schema' EXIT
sep='?'; case "$PG_URL" in *\?*) sep='&' ;; esac
export STORE=postgres STORE_URL="$PG_URL${sep}options=-c%20search_path%3D$SCHEMA"

ensure_tools
[ "${NO_BUILD:-0}" = 1 ] || build
start_upstream
start_gateway
# The second replica: the same config (secrets, keys, store), other ports.
sed -e "s/127.0.0.1:$GW_PORT\"/127.0.0.1:$GW2_PORT\"/" -e "s/127.0.0.1:$ADMIN_PORT\"/127.0.0.1:$ADMIN2_PORT\"/" \
  "$WORK/portcullis.toml" >"$WORK/portcullis-2.toml"
"$PORTCULLIS" serve --config "$WORK/portcullis-2.toml" >>"$WORK/portcullis-2.log" 2>&1 &
GW2_PID=$!
PIDS+=("$GW2_PID")
wait_http "http://127.0.0.1:$GW2_PORT/_portcullis/healthz"
signin
machine_summary

mkdir -p "$WORK/lb"
user=""; [ "$(id -u)" = 0 ] && user="user root;"
cat >"$WORK/lb/nginx.conf" <<EOF
$user
worker_processes 1;
daemon off;
pid $WORK/lb/nginx.pid;
error_log $WORK/lb/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/lb/body;
  proxy_temp_path $WORK/lb/proxy;
  fastcgi_temp_path $WORK/lb/fastcgi;
  uwsgi_temp_path $WORK/lb/uwsgi;
  scgi_temp_path $WORK/lb/scgi;
  keepalive_requests 1000000;
  upstream two { server 127.0.0.1:$GW_PORT; server 127.0.0.1:$GW2_PORT; keepalive 256; }
  upstream one { server 127.0.0.1:$GW_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$LB_PORT;
    location / { proxy_pass http://two; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
  server {
    listen 127.0.0.1:$LB1_PORT;
    location / { proxy_pass http://one; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
EOF
"$NGINX" -p "$WORK/lb" -c "$WORK/lb/nginx.conf" >"$WORK/lb/stdout.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$LB_PORT$PATH_SMALL" "$BYPASS_HOST"
wait_http "http://127.0.0.1:$LB1_PORT$PATH_SMALL" "$BYPASS_HOST"

scans() { # table scans in the bench schema so far (statistics lag up to ~1 s)
  psql -qAt "$PG_URL" -c "SELECT coalesce(sum(coalesce(seq_scan,0) + coalesce(idx_scan,0)), 0) FROM pg_stat_user_tables WHERE schemaname = '$SCHEMA'"
}

ONE=() TWO=()
Q_ONE=() Q_TWO=()
for run in $(seq "$RUNS"); do
  for target in one two; do
    port=$LB1_PORT; [ "$target" = two ] && port=$LB_PORT
    sleep 1.5; before=$(scans)
    start_ns=$(date +%s%N)
    read -r rps p50 p99 _ < <(wrk_run "$CONNS" "http://127.0.0.1:$port$PATH_SMALL" "$AUTH_HOST" "$SESSION" "$GW_PID" "$GW2_PID")
    secs=$(awk -v a="$start_ns" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    sleep 1.5; after=$(scans)
    q=$(awk -v d=$((after - before)) -v r="$rps" -v s="$DURATION" 'BEGIN { printf "%.6f", d / (r * s) }')
    if [ "$target" = one ]; then ONE+=("$rps"); Q_ONE+=("$q"); else TWO+=("$rps"); Q_TWO+=("$q"); fi
    log "run $run: $target replica(s): $rps req/s (p50 ${p50}us, p99 ${p99}us); store scans $((after - before)) in ${secs}s (+3 s idle) = $q per request"
  done
done
one=$(median "${ONE[@]}"); two=$(median "${TWO[@]}")
printf 'signed-in GET through nginx: 1 replica %s req/s, 2 replicas %s req/s, ratio %s\n' \
  "$one" "$two" "$(awk -v a="$one" -v b="$two" 'BEGIN { printf "%.2f", b / a }')"
printf 'store table scans per signed-in request (background polls included): 1 replica %s, 2 replicas %s\n' \
  "$(median "${Q_ONE[@]}")" "$(median "${Q_TWO[@]}")"
printf 'load after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
