# Shared by bench/proxy.sh, bench/login_flood.sh and bench/soak.sh (sourced, not run).
#
# Sets up, on 127.0.0.1 only: the echo upstream (examples/echo_upstream.rs),
# nginx as a plain reverse proxy, and Portcullis (release build) with a bypass
# rule and a session-protected rule; signs in through the authentication API;
# runs wrk and collects medians. Every process started here is stopped on exit.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$REPO/bench"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
PORTCULLIS=${PORTCULLIS_BIN:-$TARGET_DIR/release/portcullis}
ECHO_UPSTREAM=${ECHO_BIN:-$TARGET_DIR/release/examples/echo_upstream}

BASE_PORT=${BASE_PORT:-24180}
UP_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
GW_PORT=$((BASE_PORT + 3))
ADMIN_PORT=$((BASE_PORT + 4))
DURATION=${DURATION:-5}  # seconds per wrk run
RUNS=${RUNS:-3}          # runs per cell; the median is reported
STORE=${STORE:-memory}   # memory | sqlite (the gateway's store)
KEEP=${KEEP:-0}          # 1: keep the work directory (configs, logs)
NGINX_LOG_BUFFER=${NGINX_LOG_BUFFER:-}  # e.g. 64k: buffer nginx's access log (default: a write per request)
SERVER_EXTRA=${SERVER_EXTRA:-}          # lines added to the gateway's [server] table
UPSTREAM_EXTRA=${UPSTREAM_EXTRA:-}      # lines added to its [[upstreams]] table (header_case = "lower")
GW_WRAP=${GW_WRAP:-}                    # a command to run the gateway under (bench/counts.sh)

# Host names select the gateway's rules; the request is the same everywhere.
BYPASS_HOST=bypass.bench  # rule: bypass
ONE_HOST=one.bench        # rule: one_factor
TWO_HOST=two.bench        # rule: two_factor
PATH_SMALL=/small         # the echo app's fixed tiny answer ("ok\n")
# A path of the length real applications use, on the bypass host (its own
# rule, after the others: their requests match before reaching it).
PATH_LONG=/app/reports/2026/q3/summary-by-region.html

# A base32 TOTP secret (160 bits) for the bench user; used once TOTP exists.
TOTP_SECRET=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP
LAST_TOTP_STEP=0

PIDS=()
WORK=$(mktemp -d /tmp/portcullis-bench.XXXXXX)

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Bounded: a process that ignores SIGTERM gets SIGKILL after 5 seconds.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools and builds -------------------------------------------------------

ensure_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v curl >/dev/null || missing+=(curl)
  command -v jq >/dev/null || missing+=(jq)
  command -v python3 >/dev/null || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing: ${missing[*]}"
    [ "$(id -u)" = 0 ] || die "need root to install ${missing[*]} (or install them yourself)"
    timeout 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
}

build() {
  log "building the release binary and the echo upstream (cargo build --release)"
  # Two builds: the example pulls in dev-dependencies, whose features would
  # change the gateway's dependencies (and its symbol names, so that
  # packaging/symbol-order.txt would no longer match) in a joint build. The
  # gateway is built exactly as `cargo build --release` builds it.
  (cd "$REPO" && cargo build --release --quiet --bin portcullis && cargo build --release --quiet --example echo_upstream)
}

# --- processes ---------------------------------------------------------------

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() { # url [host]
  local i
  for i in $(seq "${WAIT_TRIES:-100}"); do
    curl -sf -o /dev/null -H "Host: ${2:-127.0.0.1}" "$1" && return 0
    sleep 0.1
  done
  die "nothing answers at $1"
}

start_upstream() {
  port_free "$UP_PORT" || die "port $UP_PORT is in use (set BASE_PORT)"
  "$ECHO_UPSTREAM" "127.0.0.1:$UP_PORT" >"$WORK/upstream.log" 2>&1 &
  UP_PID=$!
  PIDS+=("$UP_PID")
  wait_http "http://127.0.0.1:$UP_PORT$PATH_SMALL"
}

start_nginx() {
  port_free "$NGINX_PORT" || die "port $NGINX_PORT is in use (set BASE_PORT)"
  mkdir -p "$WORK/nginx"
  local user=""
  [ "$(id -u)" = 0 ] && user="user root;"
  cat >"$WORK/nginx/nginx.conf" <<EOF
# A plain reverse proxy, configured the way one would in production.
$user
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log $WORK/nginx/access.log combined${NGINX_LOG_BUFFER:+ buffer=$NGINX_LOG_BUFFER flush=1s};
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_requests 1000000;
  upstream app {
    server 127.0.0.1:$UP_PORT;
    keepalive 1024;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
  "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/stdout.log" 2>&1 &
  NGINX_PID=$!
  PIDS+=("$NGINX_PID")
  wait_http "http://127.0.0.1:$NGINX_PORT$PATH_SMALL"
}

nginx_workers() { pgrep -P "$NGINX_PID" | tr '\n' ' '; }

start_gateway() {
  port_free "$GW_PORT" || die "port $GW_PORT is in use (set BASE_PORT)"
  port_free "$ADMIN_PORT" || die "port $ADMIN_PORT is in use (set BASE_PORT)"
  PASSWORD=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  local hash flood_hash store
  hash=$(printf '%s' "$PASSWORD" | "$PORTCULLIS" hash-password)
  flood_hash=$(printf '%s' "flood-$PASSWORD" | "$PORTCULLIS" hash-password)
  cat >"$WORK/users.toml" <<EOF
[[users]]
username = "bench"
password = "$hash"
display_name = "Bench User"
email = "bench@example.com"
groups = ["staff"]
totp = { secret = "$TOTP_SECRET" }

[[users]]
username = "flood"
password = "$flood_hash"
EOF
  case "$STORE" in
    memory) store='kind = "memory"' ;;
    sqlite) store="kind = \"sqlite\"
path = \"$WORK/portcullis.db\"" ;;
    postgres) store="kind = \"postgres\"
url = \"${STORE_URL:?STORE=postgres needs STORE_URL}\"" ;;
    *) die "STORE must be memory, sqlite or postgres" ;;
  esac
  cat >"$WORK/portcullis.toml" <<EOF
default_policy = "deny"

[server]
listen = "127.0.0.1:$GW_PORT"
${SERVER_EXTRA:-}

[admin]
listen = "127.0.0.1:$ADMIN_PORT"
tokens = []

[[upstreams]]
name = "echo"
url = "http://127.0.0.1:$UP_PORT"
${UPSTREAM_EXTRA:-}

[session]
secrets = ["$(head -c 32 /dev/urandom | base64 | tr -d '\n')"]
secure = false

[users]
file = "$WORK/users.toml"

[store]
$store
encryption_keys = ["$(head -c 32 /dev/urandom | base64 | tr -d '\n')"]

# High limits so that a login flood keeps costing argon2 work instead of
# being answered from a lockout.
[regulation]
max_password_failures = 1000000
max_password_failures_per_user = 1000000
max_failures_per_ip = 1000000

[factors.totp]
enabled = true

[factors.recovery_codes]
enabled = false

[log]
level = "info"

[[rules]]
hosts = ["$BYPASS_HOST"]
path = "^/small\$"
policy = "bypass"

[[rules]]
hosts = ["$ONE_HOST"]
path = "^/small\$"
policy = "one_factor"

[[rules]]
hosts = ["$TWO_HOST"]
path = "^/small\$"
policy = "two_factor"

[[rules]]
hosts = ["$BYPASS_HOST"]
path = "^/app/"
policy = "bypass"
EOF
  "$PORTCULLIS" check-config --config "$WORK/portcullis.toml" >"$WORK/check-config.log" 2>&1 \
    || { cat "$WORK/check-config.log" >&2; die "the bench config is invalid"; }
  # Access lines go to a file, as nginx's do (stderr appended, so truncating works).
  # GW_WRAP (bench/counts.sh): a command the gateway runs under, e.g. valgrind.
  # shellcheck disable=SC2086
  ${GW_WRAP:-} "$PORTCULLIS" serve --config "$WORK/portcullis.toml" >>"$WORK/portcullis.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_http "http://127.0.0.1:$GW_PORT/_portcullis/healthz"
  wait_http "http://127.0.0.1:$GW_PORT$PATH_SMALL" "$BYPASS_HOST"
}

# --- signing in --------------------------------------------------------------

totp_code() { # base32-secret step -> 6 digits (RFC 6238, SHA-1)
  python3 - "$1" "$2" <<'EOF'
import base64, hashlib, hmac, struct, sys
s = sys.argv[1].upper()
key = base64.b32decode(s + "=" * (-len(s) % 8))
h = hmac.new(key, struct.pack(">Q", int(sys.argv[2])), hashlib.sha1).digest()
o = h[-1] & 15
print("%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000))
EOF
}

session_from() { # headers-file -> cookie value of the last portcullis_session Set-Cookie
  grep -i '^set-cookie: portcullis_session=' "$1" | tail -1 | sed -E 's/^[^=]*=([^;]*).*/\1/' | tr -d '\r'
}

# The second factor: a TOTP code this script computes itself. A code is single
# use, so a later sign-in in the same 30-second step uses the next step's code
# (within the default skew of one step) or waits for a fresh step.
second_factor_totp() { # state-token factor-id -> sets SESSION, SESSION_LEVEL on success
  local state=$1 factor=$2 step now code
  now=$(date +%s)
  step=$((now / 30))
  if [ "$step" -le "$LAST_TOTP_STEP" ]; then
    step=$((LAST_TOTP_STEP + 1))
    if [ "$step" -gt $((now / 30 + 1)) ]; then
      sleep $((step * 30 - now))
    fi
  fi
  code=$(totp_code "$TOTP_SECRET" "$step")
  curl -sS -o "$WORK/verify.json" -D "$WORK/verify.h" -H 'Content-Type: application/json' \
    -H "Host: $TWO_HOST" \
    --data "{\"stateToken\":\"$state\",\"passCode\":\"$code\"}" \
    "http://127.0.0.1:$GW_PORT/_portcullis/api/v1/authn/factors/$factor/verify" || return 1
  [ "$(jq -r '.status // empty' "$WORK/verify.json" 2>/dev/null)" = SUCCESS ] || return 1
  LAST_TOTP_STEP=$step
  local cookie
  cookie=$(session_from "$WORK/verify.h")
  [ -n "$cookie" ] || return 1
  SESSION=$cookie
  SESSION_LEVEL=2
}

# Signs in as the bench user through the authentication API and sets SESSION
# (the portcullis_session cookie value), SESSION_LEVEL and AUTH_HOST (the host
# whose rule needs that level). Two factors when the gateway offers TOTP,
# otherwise the level-1 session the password step sets.
signin() {
  curl -sS -o "$WORK/authn.json" -D "$WORK/authn.h" -H 'Content-Type: application/json' \
    -H "Host: $TWO_HOST" \
    --data "{\"username\":\"bench\",\"password\":\"$PASSWORD\"}" \
    "http://127.0.0.1:$GW_PORT/_portcullis/api/v1/authn"
  SESSION=$(session_from "$WORK/authn.h")
  SESSION_LEVEL=1
  [ -n "$SESSION" ] || { cat "$WORK/authn.h" "$WORK/authn.json" >&2; die "sign-in set no session cookie"; }
  local status state factor
  status=$(jq -r '.status // empty' "$WORK/authn.json")
  state=$(jq -r '.stateToken // empty' "$WORK/authn.json")
  factor=$(jq -r '[._embedded.factors[]? | select(.factorType == "token:software:totp") | .id][0] // empty' "$WORK/authn.json")
  if [ "$status" = MFA_REQUIRED ] && [ -n "$state" ] && [ -n "$factor" ]; then
    second_factor_totp "$state" "$factor" || log "warning: TOTP verification failed; measuring a level-1 session"
  fi
  if [ "$SESSION_LEVEL" = 2 ]; then AUTH_HOST=$TWO_HOST; else AUTH_HOST=$ONE_HOST; fi
  # The cookie must really pass: a 401 or 302 would make the numbers meaningless.
  local got
  got=$(curl -sS -H "Host: $AUTH_HOST" -H "Cookie: portcullis_session=$SESSION" "http://127.0.0.1:$GW_PORT$PATH_SMALL")
  [ "$got" = ok ] || die "the session cookie does not pass the $AUTH_HOST rule"
}

# --- measuring ---------------------------------------------------------------

cpu_ticks() { # pid... -> utime+stime of all, in clock ticks
  local total=0 pid f
  for pid in "$@"; do
    f=$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + ${f% *} + ${f#* }))
  done
  echo "$total"
}

truncate_logs() {
  : >"$WORK/portcullis.log"
  [ -f "$WORK/nginx/access.log" ] && : >"$WORK/nginx/access.log"
  return 0
}

# wrk_run conns url host cookie cpu-pids... -> "rps p50_us p99_us cpu_us_per_req"
wrk_run() {
  local conns=$1 url=$2 host=$3 cookie=$4
  shift 4
  local threads=2 before after out line requests dur p50 p99 errs
  [ "$conns" -lt 2 ] && threads=1
  local args=(-t"$threads" -c"$conns" -d"${DURATION}s" --timeout 5s -s "$BENCH_DIR/report.lua" -H "Host: $host")
  [ -n "$cookie" ] && args+=(-H "Cookie: _ga=GA1.2.1234567890.1790000000; portcullis_session=$cookie; theme=dark")
  before=$(cpu_ticks "$@")
  out=$(timeout $((DURATION + 30)) wrk "${args[@]}" "$url")
  after=$(cpu_ticks "$@")
  truncate_logs
  line=$(grep '^RESULT' <<<"$out") || die "wrk printed no result: $out"
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  dur=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<<"$line")
  p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
  errs=$(sed -E 's/.*non2xx=([0-9]+) connect=([0-9]+) read=([0-9]+) write=([0-9]+) timeout=([0-9]+).*/\1+\2+\3+\4+\5/' <<<"$line")
  [ $((errs)) -eq 0 ] || log "warning: $url ($host, $conns conns): errors $line"
  local tck
  tck=$(getconf CLK_TCK)
  awk -v r="$requests" -v d="$dur" -v p50="$p50" -v p99="$p99" -v c=$((after - before)) -v t="$tck" \
    'BEGIN { printf "%.0f %d %d %.1f\n", r / (d / 1e6), p50, p99, (r > 0 ? c * 1e6 / t / r : 0) }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

rescues() { # -> stalled password verifications the gateway rescued so far (its metrics)
  curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk '$1 == "portcullis_password_rescues_total" { s += $2 } END { printf "%d", s }'
}

peak_rss_mb() { # pid -> VmHWM in MB
  awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

rss_mb() { # pid -> VmRSS in MB
  awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

machine_summary() {
  printf 'machine: %s cores, %s, %s MB RAM; load before: %s\n' "$(nproc)" \
    "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
    "$(awk '/^MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'versions: %s; %s; %s; %s\n' "$(rustc --version 2>/dev/null || echo rustc ?)" \
    "$("$NGINX" -v 2>&1)" "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)" "$(date -u +%Y-%m-%dT%H:%MZ)"
}
