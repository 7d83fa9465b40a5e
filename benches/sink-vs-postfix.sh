#!/usr/bin/env bash
# The fake-upstream sink persona against Postfix's smtp-sink, both driven by Postfix's
# smtp-source with the same workload, in one run on this machine. Installs postfix (for
# smtp-source and smtp-sink; the Postfix daemon itself is not started) when it is missing.
#
#   benches/sink-vs-postfix.sh            # defaults below
#   MESSAGES=50000 SESSIONS=50 benches/sink-vs-postfix.sh
#
# Prints msgs/s for each server and workload: "1/conn" sends one message per connection,
# "many/conn" keeps connections open (smtp-source -d).
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
RUNS=${RUNS:-3}
PORT_FAKE=${PORT_FAKE:-27025}
PORT_POSTFIX=${PORT_POSTFIX:-27026}

# shellcheck source=postfix-relay.sh
. benches/postfix-relay.sh
need_packages smtp-source
export PATH="$PATH:/usr/sbin"

cargo build --release -q -p fake-upstream
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

./target/release/fake-upstream --persona sink --no-limits --no-web \
  --listen "127.0.0.1:$PORT_FAKE" --listen-tls 127.0.0.1:0 --data-dir "$tmp/fake" >"$tmp/fake.log" 2>&1 &
pids+=($!)
smtp-sink -u nobody -m 1000 "127.0.0.1:$PORT_POSTFIX" 1024 >"$tmp/sink.log" 2>&1 &
pids+=($!)

wait_port "$PORT_FAKE"
wait_port "$PORT_POSTFIX"

# One timed smtp-source run; prints msgs/s.
rate() {
  local port=$1 flags=$2
  local start end
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  timeout 600 smtp-source $flags -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" \
    -f sender@example.com -t rcpt@example.org "127.0.0.1:$port"
  end=$(date +%s.%N)
  echo "$MESSAGES $start $end" | awk '{ printf "%.0f", $1 / ($3 - $2) }'
}

med() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "workload: $MESSAGES messages of $SIZE octets, $SESSIONS sessions, median of $RUNS runs (interleaved)"
printf '%-12s %22s %22s\n' "workload" "fake-upstream sink" "Postfix smtp-sink"
for w in "1/conn:" "many/conn:-d"; do
  name=${w%%:*}
  flags=${w#*:}
  ours=()
  theirs=()
  # Interleaved, so that drift in the machine's speed hits both alike.
  for _ in $(seq 1 "$RUNS"); do
    ours+=("$(rate "$PORT_FAKE" "$flags")")
    theirs+=("$(rate "$PORT_POSTFIX" "$flags")")
  done
  printf '%-12s %16s msg/s %16s msg/s\n' "$name" \
    "$(printf '%s\n' "${ours[@]}" | med)" "$(printf '%s\n' "${theirs[@]}" | med)"
done
