#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg, checks what it put where,
# verifies the systemd unit, runs the installed binary on the packaged config
# (check-config, then serve briefly as the service user), and purges it again.
# Needs root and cargo-deb (`cargo install cargo-deb --locked`). Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-deb: FAILED: $*" >&2; exit 1; }
step() { printf 'test-deb: %s\n' "$*"; }

# dpkg ARGS..., waiting (up to 10 minutes) while another dpkg or apt holds
# its lock (unattended upgrades, an install of .ci/run's), as .ci/run's own
# installs wait; any other failure is reported at once.
dpkg_waiting() {
  local out i
  for i in $(seq 120); do
    if out=$(dpkg "$@" 2>&1); then return 0; fi
    case "$out" in
      *"lock"*) [ "$i" = 1 ] && step "dpkg is locked by another process; waiting" ; sleep 5 ;;
      *) printf '%s\n' "$out" >&2; return 1 ;;
    esac
  done
  printf '%s\n' "$out" >&2
  return 1
}

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
command -v cargo-deb >/dev/null 2>&1 || fail "cargo-deb is not installed (cargo install cargo-deb --locked)"

step "building the package (cargo deb)"
deb=$(cargo deb 2>/dev/null | tail -n 1)
[ -f "$deb" ] || fail "cargo deb did not print a package path"
step "built $deb"

# A leftover from an earlier run would hide what this package does.
dpkg_waiting --purge portcullis >/dev/null 2>&1 || true
rm -rf /var/lib/portcullis

step "installing with dpkg -i"
dpkg_waiting -i "$deb" >/dev/null || fail "dpkg -i $deb failed"

[ -x /usr/bin/portcullis ] || fail "/usr/bin/portcullis missing"
getent passwd portcullis >/dev/null || fail "the service user portcullis was not created"
for f in /etc/portcullis/portcullis.toml /etc/portcullis/users.toml /etc/portcullis/secrets.env; do
  [ -f "$f" ] || fail "$f missing"
  [ "$(stat -c '%a %U:%G' "$f")" = "640 root:portcullis" ] \
    || fail "$f is $(stat -c '%a %U:%G' "$f"), want 640 root:portcullis"
done
[ "$(stat -c '%a' /etc/portcullis)" = 750 ] || fail "/etc/portcullis is not 0750"
dpkg-query -W -f='${Conffiles}\n' portcullis | grep -q /etc/portcullis/portcullis.toml \
  || fail "portcullis.toml is not a conffile"
unit=$(dpkg -L portcullis | grep '/portcullis.service$' | head -n 1)
[ -n "$unit" ] || fail "no systemd unit in the package"

if command -v systemd-analyze >/dev/null 2>&1; then
  step "systemd-analyze verify $unit"
  # Only lines about our own unit count: the container's other units are not ours to judge.
  out=$(systemd-analyze verify "$unit" 2>&1 || true)
  if printf '%s\n' "$out" | grep -i 'portcullis' | grep -vi 'Failed to put bus name\|not booted' | grep -q .; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze found problems in the unit"
  fi
else
  step "systemd-analyze is not available; unit not verified"
fi
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID' "$unit" || fail "the unit has no ExecReload"
grep -q '^NoNewPrivileges=true' "$unit" || fail "the unit does not set NoNewPrivileges"
grep -q '^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$' "$unit" || fail "the unit keeps more capabilities than CAP_NET_BIND_SERVICE"
# The filter drops @resources, then gives back what a login flood's password checks
# use to enter the idle scheduling class; a refused call must fail, not kill.
awk '/^SystemCallFilter=~.*@resources/ { dropped = 1 }
     dropped && /^SystemCallFilter=[^~]/ && /sched_setscheduler/ && /setpriority/ { ok = 1 }
     END { exit !ok }' "$unit" || fail "the unit's system-call filter refuses sched_setscheduler/setpriority"
grep -q '^LimitNICE=+0$' "$unit" || fail "a stalled password check cannot leave the idle class (no LimitNICE=+0): a second work area per stall"
grep -q '^SystemCallErrorNumber=EPERM$' "$unit" || fail "a refused system call would kill the gateway (no SystemCallErrorNumber=EPERM)"

# The package made the state folder (StateDirectory= needs systemd; containers have none).
[ "$(stat -c '%U:%G %a' /var/lib/portcullis 2>/dev/null)" = "portcullis:portcullis 700" ] \
  || fail "the package did not make /var/lib/portcullis (portcullis:portcullis 0700): $(stat -c '%U:%G %a' /var/lib/portcullis 2>&1)"
# What systemd would do: the secrets as environment.
mapfile -t secrets < <(grep -v '^#' /etc/portcullis/secrets.env)
# setpriv execs the command itself (runuser would stay in between and turn a
# clean SIGTERM exit into 143).
run_as() { (cd /var/lib/portcullis && exec setpriv --reuid=portcullis --regid=portcullis --init-groups -- env "${secrets[@]}" "$@"); }

step "check-config on the packaged config, as the service user"
run_as /usr/bin/portcullis check-config --config /etc/portcullis/portcullis.toml \
  || fail "check-config refused the packaged config"

for port in 8080 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port $port is taken; the packaged config listens there"
  fi
done

step "serve, briefly"
log=$(mktemp)
(cd /var/lib/portcullis && exec setpriv --reuid=portcullis --regid=portcullis --init-groups -- env "${secrets[@]}" \
  /usr/bin/portcullis serve --config /etc/portcullis/portcullis.toml) >"$log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT
ready=0
for _ in $(seq 1 50); do
  if curl -fsS -o /dev/null http://127.0.0.1:9090/healthz 2>/dev/null; then ready=1; break; fi
  sleep 0.2
done
[ "$ready" = 1 ] || { cat "$log" >&2; fail "the installed gateway did not answer /healthz"; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: text/html' http://127.0.0.1:8080/)
[ "$status" = 302 ] || { cat "$log" >&2; fail "an anonymous browser got $status, want 302 to the portal"; }
status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9090/api/v1/users)
[ "$status" = 401 ] || fail "the admin API without a token answered $status, want 401"
token=$(grep '^PORTCULLIS_ADMIN_TOKEN=' /etc/portcullis/secrets.env | cut -d= -f2-)
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: SSWS $token" http://127.0.0.1:9090/api/v1/users)
[ "$status" = 200 ] || fail "the admin API with the generated token answered $status, want 200"
[ -f /var/lib/portcullis/portcullis.db ] || fail "no database in /var/lib/portcullis"
[ "$(stat -c '%U' /var/lib/portcullis/portcullis.db)" = portcullis ] || fail "the database is not owned by the service user"
if grep -q "$token" "$log"; then fail "the admin token appears in the log"; fi
kill -TERM "$pid"
wait "$pid" || fail "serve did not exit cleanly on SIGTERM"
trap - EXIT
rm -f "$log"

step "purging"
dpkg_waiting --purge portcullis >/dev/null || fail "dpkg --purge failed"
[ ! -e /usr/bin/portcullis ] || fail "/usr/bin/portcullis left after purge"
[ ! -e /etc/portcullis/secrets.env ] || fail "secrets.env left after purge"
step "ok"
