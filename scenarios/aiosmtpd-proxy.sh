#!/usr/bin/env bash
# Runs the portable scenarios against aiosmtpd's Proxy handler (aiosmtpd.handlers.Proxy under a
# Controller), a relay many Python shops put in front of their mail: it takes the
# message, opens a session to the upstream with smtplib for it, and answers the client. With
# its baseline (scenarios/relays/aiosmtpd-proxy.expected: it adds an X-Peer: header to every
# message, and answers 250 whatever the upstream said), so that the run fails only on change.
# Installs aiosmtpd (pip) when missing.
#
#   scenarios/aiosmtpd-proxy.sh                  # the portable scenarios, against the baseline
#   scenarios/aiosmtpd-proxy.sh --no-baseline    # every finding counts
#
# Extra arguments go to `smtp-relay scenarios`; SMTP_RELAY_BIN names a binary to use instead
# of building one; KEEP=1 keeps the temporary directory (aiosmtpd's log).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-27145}    # aiosmtpd listens here (the relay under test)
UPORT=${UPORT:-27146}  # the fake upstream listens here; the Proxy forwards to it

# shellcheck source=../benches/postfix-relay.sh
. benches/postfix-relay.sh
python3 -c 'import aiosmtpd' 2>/dev/null || pip install -q --disable-pip-version-check aiosmtpd
python3 -c 'import aiosmtpd; print("aiosmtpd", aiosmtpd.__version__)' >&2

tmp=$(mktemp -d /tmp/smtp-relay-aiosmtpd.XXXXXX)
pid=
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap stop EXIT
# The aiosmtpd command line cannot give Proxy its arguments: a Controller does.
python3 - "$PORT" "$UPORT" >"$tmp/aiosmtpd.log" 2>&1 <<'PY' &
import logging, signal, sys
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Proxy
logging.basicConfig(level=logging.INFO)
port, uport = int(sys.argv[1]), int(sys.argv[2])
Controller(Proxy("127.0.0.1", uport), hostname="127.0.0.1", port=port).start()
signal.pause()
PY
pid=$!
wait_port "$PORT"

# shellcheck source=profile.sh
. scenarios/profile.sh
run_profile aiosmtpd "$tmp/aiosmtpd.log" aiosmtpd-proxy "$@"
