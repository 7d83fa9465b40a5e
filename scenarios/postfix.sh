#!/usr/bin/env bash
# Runs the portable scenarios (those tagged `portable`: no policy of smtp-relay's own) against
# Postfix configured as a relay, to show how `smtp-relay scenarios --relay` tests a relay that
# is not ours. Installs postfix when it is missing (Debian/Ubuntu, as root), writes a
# self-contained Postfix configuration under a temporary directory (its own queue, port and
# log; the system's Postfix is not touched), starts it, runs the scenarios, stops it.
#
#   scenarios/postfix.sh                 # all portable scenarios, against its (empty) baseline
#   scenarios/postfix.sh --no-baseline   # without scenarios/relays/postfix.expected
#   scenarios/postfix.sh --filter smuggle --junit postfix.xml
#
# Extra arguments go to `smtp-relay scenarios`; SMTP_RELAY_BIN names a binary to use instead
# of building one; KEEP=1 keeps the temporary directory (Postfix's config, queue and log).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-27125}    # Postfix's smtpd listens here (the relay under test)
UPORT=${UPORT:-27126}  # the fake upstream listens here; Postfix's relayhost

# shellcheck source=../benches/postfix-relay.sh
. benches/postfix-relay.sh
need_packages postfix

tmp=$(mktemp -d /tmp/smtp-relay-postfix.XXXXXX)
stop() {
  postfix_relay_stop "$tmp"
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap stop EXIT
postfix_relay "$tmp" "$PORT" "$UPORT" "$(cat <<'EXTRA'
# Postfix 3.7.10+: refuse bare LF (SMTP smuggling); 3.9 normalises by default.
smtpd_forbid_bare_newline = yes
smtpd_forbid_bare_newline_exclusions =
# Deliver at once, retry fast: the scenarios wait seconds, not minutes.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 5s
EXTRA
)"

# shellcheck source=profile.sh
. scenarios/profile.sh
run_profile Postfix "$tmp/maillog" postfix "$@"
