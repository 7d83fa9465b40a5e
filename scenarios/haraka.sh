#!/usr/bin/env bash
# Runs the portable scenarios against Haraka (3.x, from the npm registry) relaying with its
# relay ACL (127.0.0.0/8) and the smtp_forward queue plugin to the fake upstream, with its
# baseline (scenarios/relays/haraka.expected), so that the run fails only when Haraka's results
# change. Haraka is installed with npm under target/peers/haraka (Node.js 18 or later must be
# there); its instance (config, queue, log) is made in a temporary directory.
#
#   scenarios/haraka.sh                  # the portable scenarios, against the baseline
#   scenarios/haraka.sh --no-baseline    # every finding counts
#
# Extra arguments go to `smtp-relay scenarios`; SMTP_RELAY_BIN names a binary to use instead
# of building one; KEEP=1 keeps the temporary directory; HARAKA_VERSION picks another release.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-27155}    # Haraka listens here (the relay under test)
UPORT=${UPORT:-27156}  # the fake upstream listens here; smtp_forward delivers to it

# shellcheck source=../benches/postfix-relay.sh
. benches/postfix-relay.sh
command -v node >/dev/null 2>&1 || need_packages nodejs npm
peer=$PWD/target/peers/haraka
haraka=$peer/node_modules/.bin/haraka
if [ ! -x "$haraka" ]; then
  echo "installing Haraka under $peer..." >&2
  mkdir -p "$peer"
  (cd "$peer" && npm install --no-audit --no-fund --loglevel=error "Haraka@${HARAKA_VERSION:-3}" >&2)
fi
echo "Haraka $(node -p "require('$peer/node_modules/Haraka/package.json').version")" >&2

tmp=$(mktemp -d /tmp/smtp-relay-haraka.XXXXXX)
pid=
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap stop EXIT
"$haraka" -i "$tmp/inst" >/dev/null
cfg=$tmp/inst/config
printf 'relay\nqueue/smtp_forward\n' >"$cfg/plugins"
printf '[main]\nlisten=127.0.0.1:%s\nnodes=0\n' "$PORT" >"$cfg/smtp.ini"
printf '[relay]\nacl=true\nforce_routing=false\ndest_domains=false\n' >"$cfg/relay.ini"
printf '127.0.0.0/8\n' >"$cfg/relay_acl_allow"
printf 'host=127.0.0.1\nport=%s\nenable_tls=false\nenable_outbound=true\n' "$UPORT" \
  >"$cfg/smtp_forward.ini"
echo relay.haraka.test >"$cfg/me"
printf '[main]\nlevel=info\n' >"$cfg/log.ini"
(cd "$tmp/inst" && exec "$haraka" -c .) >"$tmp/haraka.log" 2>&1 &
pid=$!
wait_port "$PORT"

# shellcheck source=profile.sh
. scenarios/profile.sh
run_profile Haraka "$tmp/haraka.log" haraka "$@"
