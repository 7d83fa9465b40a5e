#!/usr/bin/env bash
# The memory of idle client sessions: starts `smtp-relay serve` (plain listener, a sink that
# is never contacted as upstream), opens SESSIONS connections that read the greeting and then
# wait, and reports the relay's resident memory before and with them, per session. Each binary
# given is measured in ROUNDS interleaved rounds (a fresh relay each time); the median and
# min-max are printed.
#
#   benches/idle-sessions.sh                                # target/release/smtp-relay
#   SESSIONS=10000 ROUNDS=3 benches/idle-sessions.sh ./target/release/smtp-relay /tmp/old-relay
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=postfix-relay.sh
. benches/postfix-relay.sh
SESSIONS=${SESSIONS:-10000}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-27325}
if [ $# -eq 0 ]; then
  cargo build --release -q -p smtp-relay --bin smtp-relay
  set -- ./target/release/smtp-relay
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d)
relay_pid=
cleanup() {
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# One measurement: prints the KiB added by the idle sessions.
measure() {
  local bin=$1
  rm -rf "$tmp/spool"
  relay_toml relay.idle "$PORT" "$tmp/spool" 9 >"$tmp/relay.toml"
  "$bin" serve --config "$tmp/relay.toml" >"$tmp/relay.out" 2>&1 &
  relay_pid=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
  local before held
  before=$(awk '/VmRSS/ { print $2 }' "/proc/$relay_pid/status")
  rm -f "$tmp/ready"
  python3 - "$PORT" "$tmp/ready" "$SESSIONS" <<'PY' &
import socket, sys, time, resource
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, ready, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
greeted = 0
for s in socks:
    s.settimeout(10)
    if s.recv(512).startswith(b"220"):
        greeted += 1
open(ready, "w").write(str(greeted))
time.sleep(60)
PY
  local idle_pid=$!
  for _ in $(seq 1 600); do [ -s "$tmp/ready" ] && break; sleep 0.1; done
  sleep 1
  held=$(awk '/VmRSS/ { print $2 }' "/proc/$relay_pid/status")
  kill "$idle_pid" 2>/dev/null || true
  wait "$idle_pid" 2>/dev/null || true
  kill "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
  relay_pid=
  local greeted
  greeted=$(cat "$tmp/ready" 2>/dev/null || echo 0)
  if [ "$greeted" != "$SESSIONS" ]; then
    echo "only $greeted of $SESSIONS sessions were greeted" >&2
  fi
  echo $((held - before))
}

declare -A results
for round in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    results[$bin]+="$(measure "$bin") "
  done
done
for bin in "$@"; do
  # shellcheck disable=SC2086
  printf '%s\n' ${results[$bin]} | sort -n | awk -v bin="$bin" -v n="$SESSIONS" '
    { v[NR] = $1 }
    END {
      m = v[int((NR + 1) / 2)]
      printf "%s: %d idle sessions add %.1f MB (%.0f-%.0f), %.0f bytes per session\n", bin, n, m / 1024, v[1] / 1024, v[NR] / 1024, m * 1024 / n
    }'
done
