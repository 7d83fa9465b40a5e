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
#   benches/peers.sh                 # 5 s per measurement
#   DURATION=10 benches/peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
P_SINK=${P_SINK:-28025}
P_RELAY=${P_RELAY:-28026}
P_POSTFIX=${P_POSTFIX:-28027}
P_HAPROXY=${P_HAPROXY:-28028}
P_RELAY_SHM=${P_RELAY_SHM:-28029}
P_RELAY_QUEUE=${P_RELAY_QUEUE:-28030}
P_QUEUE_METRICS=${P_QUEUE_METRICS:-28031}

# shellcheck source=postfix-relay.sh
. benches/postfix-relay.sh
need_packages postfix haproxy
export PATH="$PATH:/usr/sbin"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -q --bin smtp-relay -p smtp-relay
cargo build --release -q --bin fake-upstream -p fake-upstream
bin=./target/release/smtp-relay

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

# The sink.
./target/release/fake-upstream --persona sink --no-limits --listen "127.0.0.1:$P_SINK" \
  --listen-tls 127.0.0.1:0 --data-dir "$tmp/sink" >"$tmp/sink.log" 2>&1 &
pids+=($!)

# Our relay.
cat >"$tmp/relay.toml" <<TOML
hostname = "relay.peers"
listen = "127.0.0.1:$P_RELAY"
spool_dir = "$tmp/relay/spool"
[auth]
mode = "none"
trusted_networks = ["127.0.0.0/8"]
[limits]
max_sessions = 20000
max_sessions_per_ip = 20000
max_message_size = 104857600
[upstream]
host = "127.0.0.1"
port = $P_SINK
tls = "none"
TOML
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
CFG
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

for p in "$P_SINK" "$P_RELAY" "$P_RELAY_SHM" "$P_RELAY_QUEUE" "$P_POSTFIX" "$P_HAPROXY"; do wait_port "$p"; done

# One measurement: prints "msgs/s p50 p99" (whole-message latency, ms) from the JSON.
measure() {
  local port=$1
  shift
  "$bin" load --target "127.0.0.1:$port" --quiet --json "$tmp/m.json" "$@" >"$tmp/m.out" 2>&1 || {
    cat "$tmp/m.out" >&2
    echo "0 0 0"
    return
  }
  python3 - "$tmp/m.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][0]
m = next(p for p in r["phases"] if p["phase"] == "message")
fail = r["failed"]
print(f'{r["msgs_per_s"]:.0f} {m["p50_ms"]:.3f} {m["p99_ms"]:.3f}' + (f' ({fail} failed)' if fail else ''))
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -sr)"
echo "date: $(date -u +%Y-%m-%d), ${DURATION}s per measurement, smtp-relay load as the client"
echo
printf '%-24s %-10s %10s %10s %10s %12s\n' workload through msgs/s p50_ms p99_ms "vs direct"
declare -A rate
for wl in "small-1/conn:--size 1024 --per-connection 1 --connections 20 --pipelining" \
          "small-100/conn:--size 1024 --per-connection 100 --connections 20 --pipelining" \
          "1MB-10/conn:--size 1048576 --per-connection 10 --connections 4 --pipelining"; do
  name=${wl%%:*}
  # shellcheck disable=SC2206
  args=(${wl#*:} --duration "$DURATION")
  for t in "direct:$P_SINK" "smtp-relay:$P_RELAY" "relay-shm:$P_RELAY_SHM" "relay-queue:$P_RELAY_QUEUE" "postfix:$P_POSTFIX" "haproxy:$P_HAPROXY"; do
    tname=${t%%:*}
    read -r r p50 p99 rest < <(measure "${t#*:}" "${args[@]}")
    if [ "$tname" = relay-queue ]; then
      # Its deliveries must not run into the next measurement: wait for the queue to empty.
      for _ in $(seq 1 600); do
        curl -s "127.0.0.1:$P_QUEUE_METRICS/metrics" | grep -q '^smtp_relay_queue_messages 0$' && break
        sleep 0.2
      done
    fi
    rate[$name/$tname]=$r
    base=${rate[$name/direct]:-$r}
    ratio=$(awk -v a="$r" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
    printf '%-24s %-10s %10s %10s %10s %12s %s\n' "$name" "$tname" "$r" "$p50" "$p99" "$ratio" "${rest:-}"
  done
done

echo
relay_max=${rate[small-100/conn/smtp-relay]}
half=$(awk -v r="$relay_max" 'BEGIN { printf "%.0f", r / 2 }')
echo "open loop at half the relay's maximum (small-100/conn): $half msgs/s, latency from the intended start"
read -r _ d50 d99 _ < <(measure "$P_SINK" --size 1024 --per-connection 100 --connections 20 --pipelining --rate "$half" --duration "$DURATION")
read -r _ r50 r99 _ < <(measure "$P_RELAY" --size 1024 --per-connection 100 --connections 20 --pipelining --rate "$half" --duration "$DURATION")
read -r _ s50 s99 _ < <(measure "$P_RELAY_SHM" --size 1024 --per-connection 100 --connections 20 --pipelining --rate "$half" --duration "$DURATION")
printf '  direct p50 %s ms p99 %s ms; smtp-relay p50 %s ms p99 %s ms (added p99 %s ms); relay-shm p50 %s ms p99 %s ms (added p99 %s ms)\n' \
  "$d50" "$d99" "$r50" "$r99" "$(awk -v a="$r99" -v b="$d99" 'BEGIN { printf "%.3f", a - b }')" \
  "$s50" "$s99" "$(awk -v a="$s99" -v b="$d99" 'BEGIN { printf "%.3f", a - b }')"

echo
echo "load generators on the same sink (20 sessions, 1 KiB, one message per connection, then 100 per connection)"
messages=$(awk -v r="${rate[small-1/conn/direct]}" -v d="$DURATION" 'BEGIN { printf "%.0f", r * d }')
for mode in "1:" "100:-d"; do
  per=${mode%%:*}
  flag=${mode#*:}
  read -r ours _ < <(measure "$P_SINK" --size 1024 --per-connection "$per" --connections 20 --messages "$messages")
  start=$(date +%s.%N)
  # shellcheck disable=SC2086
  smtp-source $flag -s 20 -m "$messages" -l 1024 -f load@example.com -t rcpt@example.org "127.0.0.1:$P_SINK"
  end=$(date +%s.%N)
  theirs=$(awk -v n="$messages" -v a="$start" -v b="$end" 'BEGIN { printf "%.0f", n / (b - a) }')
  printf '  %s per connection: smtp-relay load %s msgs/s, smtp-source %s msgs/s\n' "$per" "$ours" "$theirs"
done

echo
echo "idle sessions: 10,000 connections held open on the relay"
before=$(awk '/VmRSS/ { print $2 }' "/proc/$relay_pid/status")
python3 - "$P_RELAY" "$tmp/idle-ready" <<'PY' &
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
print(f"  {greeted} of {len(socks)} sessions greeted and idle", flush=True)
open(ready, "w").write("ready")
time.sleep(30)
PY
idle_pid=$!
for _ in $(seq 1 600); do [ -e "$tmp/idle-ready" ] && break; sleep 0.1; done
sleep 1
held=$(awk '/VmRSS/ { print $2 }' "/proc/$relay_pid/status")
kill "$idle_pid" 2>/dev/null || true
wait "$idle_pid" 2>/dev/null || true
printf '  relay resident memory: %s KiB before, %s KiB with the 10,000 idle sessions (%s KiB more)\n' \
  "$before" "$held" "$((held - before))"
