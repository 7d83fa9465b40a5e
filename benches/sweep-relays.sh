#!/usr/bin/env bash
# The degradation sweep (`smtp-relay load --sweep`) against relays we did not write as well as
# ours: one fake upstream (the sink persona) behind all of them, its faults set through its
# HTTP API (`load --fake-api`), the relays loaded one after the other:
#
#   smtp-relay          live (the client's 250 is the upstream's)
#   smtp-relay-queue    store and forward (250 once the message is in its queue)
#   postfix             Postfix 3.7 as a relay (a queueing relay; installed when missing)
#   aiosmtpd-proxy      aiosmtpd 1.4.6's Proxy handler (live; installed with pip when missing)
#
# and, to the relays that offer CHUNKING (smtp-relay, Postfix), once more in BDAT. Each run:
# open loop, RATE msgs/s on at most 400 connections, 1 KiB, one message per connection, a
# baseline and one step per upstream delay at the end of data, each held HOLD seconds and
# followed by AFTER seconds without it. Prints each run's table and writes the JSON, HTML and
# interval logs to OUT (target/sweep-relays by default).
#
#   benches/sweep-relays.sh                      # every relay, DATA and BDAT
#   RELAYS="smtp-relay postfix" benches/sweep-relays.sh
#   SWEEP='MAIL: 451 4.7.1 MI:SFQ throttled, probability {0.05,0.5}' benches/sweep-relays.sh
#
# Needs root for Postfix (its master starts as root). Loopback only; every run is bounded by
# the sweep's own steps.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

RATE=${RATE:-200}
HOLD=${HOLD:-5}
AFTER=${AFTER:-3}
SWEEP=${SWEEP:-'end of data: delay {0,50,200,1000}ms'}
RELAYS=${RELAYS:-"smtp-relay smtp-relay-queue postfix aiosmtpd-proxy"}
BDAT_RELAYS=${BDAT_RELAYS:-"smtp-relay postfix"}
OUT=${OUT:-$root/target/sweep-relays}

P_FAKE=${P_FAKE:-27201}
P_WEB=${P_WEB:-27202}
P_RELAY=${P_RELAY:-27203}
P_QUEUE=${P_QUEUE:-27204}
P_POSTFIX=${P_POSTFIX:-27205}
P_AIOSMTPD=${P_AIOSMTPD:-27206}

# shellcheck source=postfix-relay.sh
. benches/postfix-relay.sh
case " $RELAYS $BDAT_RELAYS " in *" postfix "*) need_packages postfix ;; esac
case " $RELAYS " in
  *" aiosmtpd-proxy "*)
    python3 -c 'import aiosmtpd' 2>/dev/null || pip install -q --disable-pip-version-check aiosmtpd
    ;;
esac

cargo build --release -q --locked --bin smtp-relay
cargo build --release -q --locked -p fake-upstream --bin fake-upstream
bin=$root/target/release/smtp-relay
mkdir -p "$OUT"

tmp=$(mktemp -d /tmp/smtp-relay-sweep.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
  postfix_relay_stop "$tmp/postfix" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# The fake upstream: the sink, no limits, its API on P_WEB (the faults of each step go there).
"$root/target/release/fake-upstream" --persona sink --no-limits --listen "127.0.0.1:$P_FAKE" \
  --web "127.0.0.1:$P_WEB" --tally-load --data-dir "$tmp/fake" >"$tmp/fake.log" 2>&1 &
pids+=($!)

relay_toml relay.sweep "$P_RELAY" "$tmp/relay/spool" "$P_FAKE" >"$tmp/relay.toml"
sed -e "s|^listen = .*|listen = \"127.0.0.1:$P_QUEUE\"|" -e "s|^spool_dir = .*|spool_dir = \"$tmp/relay-queue/spool\"|" \
  -e "s|^tls = \"none\"|tls = \"none\"\nmode = \"queue\"|" "$tmp/relay.toml" >"$tmp/relay-queue.toml"
printf '[queue]\ndir = "%s"\nfirst_retry_secs = 1\nmax_retry_secs = 5\n' "$tmp/relay-queue/queue" >>"$tmp/relay-queue.toml"

ports=("$P_FAKE" "$P_WEB")
for r in $RELAYS $BDAT_RELAYS; do
  case $r in
    smtp-relay)
      if [ -z "${relay_started:-}" ]; then
        "$bin" serve --config "$tmp/relay.toml" >"$tmp/relay.out" 2>&1 &
        pids+=($!)
        relay_started=1
        ports+=("$P_RELAY")
      fi
      ;;
    smtp-relay-queue)
      "$bin" serve --config "$tmp/relay-queue.toml" >"$tmp/relay-queue.out" 2>&1 &
      pids+=($!)
      ports+=("$P_QUEUE")
      ;;
    postfix)
      if [ -z "${postfix_started:-}" ]; then
        postfix_relay "$tmp/postfix" "$P_POSTFIX" "$P_FAKE" "$(cat <<'EXTRA'
default_process_limit = 500
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
EXTRA
)"
        postfix_started=1
        ports+=("$P_POSTFIX")
      fi
      ;;
    aiosmtpd-proxy)
      python3 - "$P_AIOSMTPD" "$P_FAKE" >"$tmp/aiosmtpd.log" 2>&1 <<'PY' &
import signal, sys
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Proxy
port, uport = int(sys.argv[1]), int(sys.argv[2])
Controller(Proxy("127.0.0.1", uport), hostname="127.0.0.1", port=port).start()
signal.pause()
PY
      pids+=($!)
      ports+=("$P_AIOSMTPD")
      ;;
    *)
      echo "unknown relay $r (smtp-relay, smtp-relay-queue, postfix, aiosmtpd-proxy)" >&2
      exit 2
      ;;
  esac
done
for p in "${ports[@]}"; do wait_port "$p"; done

port_of() {
  case $1 in
    smtp-relay) echo "$P_RELAY" ;;
    smtp-relay-queue) echo "$P_QUEUE" ;;
    postfix) echo "$P_POSTFIX" ;;
    aiosmtpd-proxy) echo "$P_AIOSMTPD" ;;
  esac
}

# A queueing relay's deliveries must not run into the next run: wait until the fake's count
# of messages received has not moved for 2 s (at most 120 s).
received() {
  curl -sf "http://127.0.0.1:$P_WEB/api/v1/servers" |
    python3 -c 'import json,sys; print(sum(s["received"] for s in json.load(sys.stdin)["servers"]))'
}
settle() {
  local last=-1 now
  for _ in $(seq 1 60); do
    now=$(received)
    [ "$now" = "$last" ] && return 0
    last=$now
    sleep 2
  done
  echo "(the fake still receiving after 120 s)" >&2
}

sweep() {
  local name=$1 label=$2
  shift 2
  echo
  echo "== $label ($(date -u +%H:%M:%S))"
  "$bin" load --target "127.0.0.1:$(port_of "$name")" --fake-api "http://127.0.0.1:$P_WEB" \
    --rate "$RATE" --connections 400 --size 1024 --duration "$HOLD" --recovery "$AFTER" \
    --sweep "$SWEEP" --quiet --json "$OUT/$label.json" --html "$OUT/$label.html" \
    --hlog "$OUT/$label.hlog" "$@" | sed -n '/^  step/,/^  recovered:/p' | grep -v '^  recovered:' || true
  settle
}

for r in $RELAYS; do sweep "$r" "$r"; done
for r in $BDAT_RELAYS; do sweep "$r" "$r-bdat" --bdat; done
echo
echo "reports in $OUT"
