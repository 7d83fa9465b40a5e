#!/usr/bin/env bash
# smtp-relay against its peers, in one run on this machine, with smtp-relay's own load
# generator: the same workloads straight to a sink ("direct"), through our relay
# (`smtp-relay serve`, its spool on this disk), through Postfix as a relay (a self-contained
# configuration under a temporary directory; it queues to disk too), and through HAProxy in
# TCP mode (the "relay that adds nothing" bound). Then our load generator against Postfix's
# smtp-source on the same sink, the relay's p99 added latency at half its maximum load (open
# loop), and the relay's memory with 10,000 idle sessions. "relay-shm" is the same relay with
# its spool on tmpfs: the difference is what the disk costs. "relay-queue" is the relay in
# store-and-forward mode (250 after fsync, like Postfix). Installs postfix and haproxy
# when they are missing (Debian, as root).
#
# This machine is noisy, so every cell is measured in ROUNDS interleaved rounds (each system
# once per round, the order rotating from round to round) and reported as the median with its
# min-max; ratios are taken within a round (against direct and HAProxy measured in that round),
# then their median. BASELINE=<git revision> adds "relay@<rev>": the relay built from that
# revision (cached under target/peers-baseline/), same configuration, same rounds, so that a
# change is judged before/after in one run.
#
#   benches/peers.sh                          # 3 rounds, 5 s per measurement
#   ROUNDS=5 DURATION=10 benches/peers.sh --json /tmp/peers.json
#   BASELINE=e4e4a9e benches/peers.sh         # also the relay as it was at e4e4a9e
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
BASELINE=${BASELINE:-}
JSON=
while [ $# -gt 0 ]; do
  case $1 in
    --json) JSON=${2:?--json needs a file}; shift 2 ;;
    *) echo "usage: [ROUNDS=n] [DURATION=s] [BASELINE=rev] $0 [--json FILE]" >&2; exit 2 ;;
  esac
done
P_SINK=${P_SINK:-28025}
P_RELAY=${P_RELAY:-28026}
P_POSTFIX=${P_POSTFIX:-28027}
P_HAPROXY=${P_HAPROXY:-28028}
P_RELAY_SHM=${P_RELAY_SHM:-28029}
P_RELAY_QUEUE=${P_RELAY_QUEUE:-28030}
P_QUEUE_METRICS=${P_QUEUE_METRICS:-28031}
P_RELAY_BASE=${P_RELAY_BASE:-28032}
P_SINK_TLS=${P_SINK_TLS:-28033}
P_RELAY_TLS=${P_RELAY_TLS:-28034}
P_RELAY_TLS_PLAIN=${P_RELAY_TLS_PLAIN:-28035}
P_HAPROXY_TLS=${P_HAPROXY_TLS:-28036}

# shellcheck source=postfix-relay.sh
. benches/postfix-relay.sh
need_packages postfix haproxy
export PATH="$PATH:/usr/sbin"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q --bin smtp-relay -p smtp-relay
cargo build --release -q --bin fake-upstream -p fake-upstream
bin=./target/release/smtp-relay
# The baseline relay, built once per revision from a detached worktree.
base_bin=
if [ -n "$BASELINE" ]; then
  base_rev=$(git rev-parse --verify "$BASELINE^{commit}")
  base_name="relay@$(git rev-parse --short "$base_rev")"
  base_target=target/peers-baseline/$base_rev
  base_bin=$base_target/release/smtp-relay
  if [ ! -x "$base_bin" ]; then
    echo "building $base_name (once; cached in $base_target)..." >&2
    src=$(mktemp -d /tmp/smtp-relay-baseline.XXXXXX)
    git worktree add --detach -q "$src" "$base_rev"
    (cd "$src" && cargo build --release -q --bin smtp-relay -p smtp-relay --target-dir "$root/$base_target")
    git worktree remove --force "$src"
  fi
fi

tmp=$(mktemp -d /tmp/smtp-relay-peers.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
  postfix_relay_stop "$tmp/postfix"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp" "${shm:-/nonexistent}"
}
trap cleanup EXIT

# The sink, plain and on implicit TLS with a certificate from its own CA (for localhost and
# 127.0.0.1). The TLS workloads use that certificate on every hop: the relay's and HAProxy's
# listeners present it, and they verify the sink's against the CA.
./target/release/fake-upstream --persona sink --no-limits --no-web --listen "127.0.0.1:$P_SINK" \
  --listen-tls "127.0.0.1:$P_SINK_TLS" --cert private-ca --data-dir "$tmp/sink" >"$tmp/sink.log" 2>&1 &
pids+=($!)
certs=$tmp/sink/tls-private-ca
for _ in $(seq 1 100); do [ -s "$certs/key.pem" ] && break; sleep 0.1; done
cat "$certs/cert.pem" "$certs/key.pem" >"$tmp/haproxy.pem"

# Our relay.
relay_toml relay.peers "$P_RELAY" "$tmp/relay/spool" "$P_SINK" "max_message_size = 104857600" >"$tmp/relay.toml"
"$bin" serve --config "$tmp/relay.toml" >"$tmp/relay.out" 2>&1 &
relay_pid=$!
pids+=($relay_pid)
# The same relay with its spool in memory (tmpfs): what the relay costs without the disk.
shm=$(mktemp -d /dev/shm/smtp-relay-peers.XXXXXX)
sed -e "s|^listen = .*|listen = \"127.0.0.1:$P_RELAY_SHM\"|" -e "s|^spool_dir = .*|spool_dir = \"$shm/spool\"|" \
  "$tmp/relay.toml" >"$tmp/relay-shm.toml"
"$bin" serve --config "$tmp/relay-shm.toml" >"$tmp/relay-shm.out" 2>&1 &
pids+=($!)
# The same relay storing and forwarding: 250 only once the message is fsynced in its queue
# (as Postfix's 250 is), delivered to the sink from there.
sed -e "s|^listen = .*|listen = \"127.0.0.1:$P_RELAY_QUEUE\"|" -e "s|^spool_dir = .*|spool_dir = \"$tmp/relay-queue/spool\"|" \
  -e "s|^tls = \"none\"|tls = \"none\"\nmode = \"queue\"|" "$tmp/relay.toml" >"$tmp/relay-queue.toml"
printf '[queue]\ndir = "%s"\nfirst_retry_secs = 1\nmax_retry_secs = 5\nconcurrency = 8\n' "$tmp/relay-queue/queue" >>"$tmp/relay-queue.toml"
"$bin" serve --config "$tmp/relay-queue.toml" --metrics "127.0.0.1:$P_QUEUE_METRICS" >"$tmp/relay-queue.out" 2>&1 &
pids+=($!)

# The baseline relay: the same configuration as smtp-relay's, its own port and spool.
if [ -n "$base_bin" ]; then
  sed -e "s|^listen = .*|listen = \"127.0.0.1:$P_RELAY_BASE\"|" -e "s|^spool_dir = .*|spool_dir = \"$tmp/relay-base/spool\"|" \
    "$tmp/relay.toml" >"$tmp/relay-base.toml"
  "$base_bin" serve --config "$tmp/relay-base.toml" >"$tmp/relay-base.out" 2>&1 &
  base_pid=$!
  pids+=($base_pid)
fi

# The relay with TLS on both hops: clients on implicit TLS, the sink over implicit TLS.
sed -e "s|^listen = .*|listen = \"127.0.0.1:$P_RELAY_TLS_PLAIN\"\nlisten_tls = \"127.0.0.1:$P_RELAY_TLS\"|" \
  -e "s|^spool_dir = .*|spool_dir = \"$tmp/relay-tls/spool\"|" -e "s|^port = .*|port = $P_SINK_TLS|" \
  -e "s|^tls = \"none\"|tls = \"implicit\"\nca = \"$certs/ca.pem\"|" "$tmp/relay.toml" >"$tmp/relay-tls.toml"
printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$certs/cert.pem" "$certs/key.pem" >>"$tmp/relay-tls.toml"
"$bin" serve --config "$tmp/relay-tls.toml" >"$tmp/relay-tls.out" 2>&1 &
pids+=($!)

# Postfix as a relay to the sink.
postfix_relay "$tmp/postfix" "$P_POSTFIX" "$P_SINK" "$(cat <<'EXTRA'
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
message_size_limit = 104857600
EXTRA
)"

# HAProxy in TCP mode.
cat >"$tmp/haproxy.cfg" <<CFG
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen smtp
  bind 127.0.0.1:$P_HAPROXY
  server sink 127.0.0.1:$P_SINK
listen smtps
  bind 127.0.0.1:$P_HAPROXY_TLS ssl crt $tmp/haproxy.pem
  server sink 127.0.0.1:$P_SINK_TLS ssl verify required ca-file $certs/ca.pem
CFG
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

systems=("direct:$P_SINK" "smtp-relay:$P_RELAY" "relay-shm:$P_RELAY_SHM" "relay-queue:$P_RELAY_QUEUE" "postfix:$P_POSTFIX" "haproxy:$P_HAPROXY")
[ -n "$base_bin" ] && systems+=("$base_name:$P_RELAY_BASE")
# TLS on both hops: the same names, so that ratios are against direct and HAProxy over TLS.
tls_systems=("direct:$P_SINK_TLS" "smtp-relay:$P_RELAY_TLS" "haproxy:$P_HAPROXY_TLS")
for t in "${systems[@]}" "${tls_systems[@]}"; do wait_port "${t#*:}"; done

# One measurement: prints "msgs/s p50 p99 failed" (whole-message latency, ms) from the JSON.
measure() {
  local port=$1
  shift
  "$bin" load --target "127.0.0.1:$port" --quiet --json "$tmp/m.json" "$@" >"$tmp/m.out" 2>&1 || {
    cat "$tmp/m.out" >&2
    echo "0 0 0 -1"
    return
  }
  python3 - "$tmp/m.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
m = next(p for p in r["phases"] if p["phase"] == "message")
print(f'{r["msgs_per_s"]:.0f} {m["p50_ms"]:.3f} {m["p99_ms"]:.3f} {r["failed"]}')
PY
}

# The queue's deliveries must not run into the next measurement: wait for it to empty.
queue_drained() {
  for _ in $(seq 1 600); do
    curl -s "127.0.0.1:$P_QUEUE_METRICS/metrics" | grep -q '^smtp_relay_queue_messages 0$' && return
    sleep 0.2
  done
}

cells=$tmp/cells.tsv # round, workload, system, msgs/s, p50, p99, failed
extras=$tmp/extras.tsv # key, value: the open loop and idle-session figures
: >"$cells"
: >"$extras"
tls_args="--tls --ca $certs/ca.pem --server-name localhost"
# name|systems (the array's name)|load arguments
workloads=("small-1/conn|systems|--size 1024 --per-connection 1 --connections 20 --pipelining"
           "small-100/conn|systems|--size 1024 --per-connection 100 --connections 20 --pipelining"
           "1MB-10/conn|systems|--size 1048576 --per-connection 10 --connections 4 --pipelining"
           "tls-1/conn|tls_systems|--size 1024 --per-connection 1 --connections 20 --pipelining $tls_args"
           "tls-100/conn|tls_systems|--size 1024 --per-connection 100 --connections 20 --pipelining $tls_args")
total=$((ROUNDS * (3 * ${#systems[@]} + 2 * ${#tls_systems[@]})))
done_cells=0
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -sr)"
echo "date: $(date -u +%Y-%m-%d), $ROUNDS rounds, ${DURATION}s per measurement, smtp-relay load as the client"
for round in $(seq 1 "$ROUNDS"); do
  for wl in "${workloads[@]}"; do
    IFS='|' read -r name set_name wl_args <<<"$wl"
    declare -n set=$set_name
    members=("${set[@]}")
    unset -n set
    # shellcheck disable=SC2206
    args=($wl_args --duration "$DURATION")
    n=${#members[@]}
    for i in $(seq 0 $((n - 1))); do
      t=${members[$(((i + round - 1) % n))]}
      tname=${t%%:*}
      read -r r p50 p99 failed < <(measure "${t#*:}" "${args[@]}")
      [ "$tname" = relay-queue ] && queue_drained
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$tname" "$r" "$p50" "$p99" "$failed" >>"$cells"
      done_cells=$((done_cells + 1))
      printf '\r[%d/%d] round %d %-15s %-14s %8s msgs/s' "$done_cells" "$total" "$round" "$name" "$tname" "$r" >&2
    done
  done
done
printf '\n' >&2

# The median of a column of numbers.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
relay_max=$(awk -F'\t' '$2 == "small-100/conn" && $3 == "smtp-relay" { print $4 }' "$cells" | median)
half=$(awk -v r="$relay_max" 'BEGIN { printf "%.0f", r / 2 }')
open_systems=("direct:$P_SINK" "smtp-relay:$P_RELAY" "relay-shm:$P_RELAY_SHM" "haproxy:$P_HAPROXY")
[ -n "$base_bin" ] && open_systems+=("$base_name:$P_RELAY_BASE")
echo "open loop at half the relay's median maximum (small-100/conn): $half msgs/s, latency from the intended start" >&2
for round in $(seq 1 "$ROUNDS"); do
  m=${#open_systems[@]}
  for i in $(seq 0 $((m - 1))); do
    t=${open_systems[$(((i + round - 1) % m))]}
    read -r _ p50 p99 _ < <(measure "${t#*:}" --size 1024 --per-connection 100 --connections 20 --pipelining --rate "$half" --duration "$DURATION")
    printf '%s\t%s\t%s\t%s\n' "$round" "${t%%:*}" "$p50" "$p99" >>"$tmp/open.tsv"
  done
done
printf 'open_loop_rate\t%s\n' "$half" >>"$extras"

echo "load generators on the same sink (20 sessions, 1 KiB, one message per connection, then 100 per connection)" >&2
direct_max=$(awk -F'\t' '$2 == "small-1/conn" && $3 == "direct" { print $4 }' "$cells" | median)
messages=$(awk -v r="$direct_max" -v d="$DURATION" 'BEGIN { printf "%.0f", r * d }')
for mode in "1:" "100:-d"; do
  per=${mode%%:*}
  flag=${mode#*:}
  read -r ours _ < <(measure "$P_SINK" --size 1024 --per-connection "$per" --connections 20 --messages "$messages")
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  smtp-source $flag -s 20 -m "$messages" -l 1024 -f load@example.com -t rcpt@example.org "127.0.0.1:$P_SINK"
  end=$(date +%s.%N)
  theirs=$(awk -v n="$messages" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
  printf 'generator_%s_per_conn_smtp_relay_load\t%s\n' "$per" "$ours" >>"$extras"
  printf 'generator_%s_per_conn_smtp_source\t%s\n' "$per" "$theirs" >>"$extras"
done

# Resident memory of a relay (pid, port) before and with 10,000 idle sessions on it, in KiB.
idle_sessions() {
  local pid=$1 port=$2 key=$3
  local before held
  rm -f "$tmp/idle-ready"
  before=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
  python3 - "$port" "$tmp/idle-ready" <<'PY' &
import socket, sys, time, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
port, ready = int(sys.argv[1]), sys.argv[2]
socks = []
for i in range(10000):
    socks.append(socket.create_connection(("127.0.0.1", port)))
greeted = 0
for s in socks:
    s.settimeout(10)
    if s.recv(512).startswith(b"220"):
        greeted += 1
open(ready, "w").write(str(greeted))
time.sleep(30)
PY
  local idle_pid=$!
  for _ in $(seq 1 600); do [ -s "$tmp/idle-ready" ] && break; sleep 0.1; done
  sleep 1
  held=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
  kill "$idle_pid" 2>/dev/null || true
  wait "$idle_pid" 2>/dev/null || true
  printf '%s_greeted\t%s\n%s_rss_before_kib\t%s\n%s_rss_idle_kib\t%s\n' \
    "$key" "$(cat "$tmp/idle-ready" 2>/dev/null || echo 0)" "$key" "$before" "$key" "$held" >>"$extras"
  sleep 2 # the relay closes the 10,000 sessions before the next one is measured
}
echo "idle sessions: 10,000 connections held open on the relay" >&2
idle_sessions "$relay_pid" "$P_RELAY" idle
[ -n "$base_bin" ] && idle_sessions "$base_pid" "$P_RELAY_BASE" idle_baseline

python3 benches/peers-report.py "$cells" "$tmp/open.tsv" "$extras" "$ROUNDS" "$DURATION" "${JSON:-}"
