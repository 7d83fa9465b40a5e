#!/usr/bin/env bash
# Two relays behind HAProxy (TCP mode, `send-proxy-v2`, round robin), as the README's "Behind
# HAProxy" recipe sets them up: each relay takes PROXY headers from HAProxy's address only and
# relays without AUTH for the client's network only. The client connects from 127.0.0.77
# (HAProxy reaches the relays from 127.0.0.1), so a message goes through only when the relay
# believes the header; then both relays' spool records must name 127.0.0.77, both must have
# taken messages, and the sink must hold them all. A client that bypasses HAProxy is refused.
# Installs haproxy when missing (Debian, as root).
#
# Usage: tests/interop/haproxy.sh   (SMTP_RELAY_BIN, FAKE_UPSTREAM_BIN: default target/debug)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
BIN=${SMTP_RELAY_BIN:-$PWD/target/debug/smtp-relay}
FAKE=${FAKE_UPSTREAM_BIN:-$PWD/target/debug/fake-upstream}
[ -x "$BIN" ] && [ -x "$FAKE" ] || cargo build --locked -q -p smtp-relay -p fake-upstream
# shellcheck source=../../benches/postfix-relay.sh
. benches/postfix-relay.sh # need_packages, wait_port
need_packages haproxy
export PATH="$PATH:/usr/sbin"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
P_SINK=$(free_port)
P_R1=$(free_port)
P_R2=$(free_port)
P_LB=$(free_port)
MESSAGES=10

"$FAKE" --persona sink --keep --no-web --listen "127.0.0.1:$P_SINK" --listen-tls 127.0.0.1:0 \
  --data-dir "$tmp/sink" >"$tmp/sink.log" 2>&1 &
pids+=($!)
for r in 1 2; do
  port_var="P_R$r"
  cat >"$tmp/relay$r.toml" <<TOML
hostname = "relay$r.test"
listen = "127.0.0.1:${!port_var}"
spool_dir = "$tmp/relay$r/spool"
[proxy_protocol]
trusted = ["127.0.0.1/32"]
[auth]
mode = "none"
trusted_networks = ["127.0.0.77/32"]
[upstream]
host = "127.0.0.1"
port = $P_SINK
tls = "none"
TOML
  "$BIN" serve --config "$tmp/relay$r.toml" >"$tmp/relay$r.out" 2>&1 &
  pids+=($!)
done
cat >"$tmp/haproxy.cfg" <<CFG
global
  maxconn 200
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
listen smtp
  bind 127.0.0.1:$P_LB
  balance roundrobin
  server relay1 127.0.0.1:$P_R1 send-proxy-v2
  server relay2 127.0.0.1:$P_R2 send-proxy-v2
CFG
haproxy -f "$tmp/haproxy.cfg" -db >"$tmp/haproxy.log" 2>&1 &
pids+=($!)
for p in "$P_SINK" "$P_R1" "$P_R2" "$P_LB"; do
  wait_port "$p" || { cat "$tmp"/*.out "$tmp/haproxy.log"; exit 1; }
done

echo "== $MESSAGES messages from 127.0.0.77 through HAProxy"
python3 - "$P_LB" "$MESSAGES" <<'PY'
import smtplib, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.77", 0), timeout=30) as s:
        s.ehlo("client.example")
        s.sendmail("alice@example.com", ["bob@example.org"],
                   f"Subject: behind haproxy {i}\r\n\r\nhello {i}\r\n")
print(f"{n} sent")
PY

echo "== what each relay recorded"
fail=0
for r in 1 2; do
  # The spool's record logs: a message's record per line.
  records=$(cat "$tmp/relay$r/spool/records/"*.jsonl 2>/dev/null | wc -l)
  clients=$(cat "$tmp/relay$r/spool/records/"*.jsonl 2>/dev/null | python3 -c 'import json, sys; [print(json.loads(l)["client"].split(":")[0]) for l in sys.stdin if l.strip()]' | sort -u | tr '\n' ' ')
  echo "relay$r: $records messages, client addresses: $clients"
  [ "$records" -ge 1 ] || { echo "relay$r took no message: not balanced"; fail=1; }
  [ "$clients" = "127.0.0.77 " ] || { echo "relay$r recorded another address than the client's"; fail=1; }
done
delivered=$(find "$tmp/sink" -name '*.eml' | wc -l)
echo "sink: $delivered delivered"
[ "$delivered" -eq "$MESSAGES" ] || { echo "expected $MESSAGES at the sink"; fail=1; }
grep -h '^Received: from client.example' -r "$tmp/sink" --include='*.eml' | sort -u | head -3

echo "== a client that bypasses HAProxy"
python3 - "$P_R1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), source_address=("127.0.0.77", 0), timeout=10)
greeting = s.recv(512).decode().strip()
print(f"direct from 127.0.0.77: {greeting}")
assert greeting.startswith("554 5.7.1"), greeting
PY
if [ "$fail" -ne 0 ]; then
  cat "$tmp"/relay*.out "$tmp/haproxy.log"
  exit 1
fi
echo "haproxy interop: passed (2 relays behind send-proxy-v2, client address kept)"
