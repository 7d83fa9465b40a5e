#!/usr/bin/env bash
# Relays one large message (100 MB by default) through `smtp-relay serve` to the fake sink in a
# separate process, and reports the relay's peak memory (VmHWM): the message is streamed, so
# it must stay far below the message size. MODE=queue: the relay stores and forwards (the
# message goes to its queue, then from there to the sink; the peak covers both).
#
#   benches/relay-memory.sh            # SIZE_MB=100
#   MODE=queue benches/relay-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-100}
MODE=${MODE:-live}
PORT_RELAY=${PORT_RELAY:-27225}
PORT_SINK=${PORT_SINK:-27226}

cargo build --release -q -p fake-upstream -p smtp-relay
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

./target/release/fake-upstream --persona sink --no-limits --no-web --listen 127.0.0.1:0 \
  --listen-tls "127.0.0.1:$PORT_SINK" --data-dir "$tmp/sink" >"$tmp/sink.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -f "$tmp/sink/ca.pem" ] && grep -q '^Ctrl-C' "$tmp/sink.log" && break; sleep 0.1; done

cat >"$tmp/relay.toml" <<TOML
hostname = "relay.test"
listen = "127.0.0.1:$PORT_RELAY"
spool_dir = "spool"
[auth]
mode = "trusted"
trusted_networks = ["127.0.0.0/8"]
[limits]
max_message_size = $(( (SIZE_MB + 10) * 1024 * 1024 ))
[upstream]
host = "127.0.0.1"
port = $PORT_SINK
tls = "implicit"
ca = "sink/ca.pem"
server_name = "localhost"
TOML
if [ "$MODE" = queue ]; then
  sed -i 's/^tls = "implicit"/tls = "implicit"\nmode = "queue"/' "$tmp/relay.toml"
  printf '[queue]\ndir = "queue"\n' >>"$tmp/relay.toml"
fi
./target/release/smtp-relay serve --config "$tmp/relay.toml" >"$tmp/relay.log" 2>&1 &
relay_pid=$!
pids+=($relay_pid)
for _ in $(seq 1 100); do grep -q '^Ctrl-C' "$tmp/relay.log" && break; sleep 0.1; done

start=$(date +%s.%N)
python3 - "$PORT_RELAY" "$SIZE_MB" <<'PY'
import smtplib, sys
port, size_mb = int(sys.argv[1]), int(sys.argv[2])
line = b"x" * 76 + b"\r\n"
body = b"From: a@x.example\r\nSubject: big\r\n\r\n" + line * (size_mb * 1024 * 1024 // len(line))
with smtplib.SMTP("127.0.0.1", port, timeout=300) as s:
    s.sendmail("a@x.example", ["b@y.example"], body)
PY
if [ "$MODE" = queue ]; then
  # Delivered from the queue: it is empty again.
  for _ in $(seq 1 1200); do
    ./target/release/smtp-relay queue --dir "$tmp/queue" list 2>/dev/null | grep -q '^0 message(s) queued' && break
    sleep 0.1
  done
fi
end=$(date +%s.%N)
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$relay_pid/status")
echo "relayed ${SIZE_MB} MB ($MODE) in $(echo "$start $end" | awk '{ printf "%.1f", $2 - $1 }') s; relay peak RSS (VmHWM): $(( hwm / 1024 )) MiB"
