#!/usr/bin/env bash
# Runs the portable scenarios against OpenSMTPD (Debian's 6.8) configured as a relay, with
# its baseline (scenarios/relays/opensmtpd.expected: the findings known for that version), so
# that the run fails only when OpenSMTPD's results change. OpenSMTPD 6.8 takes `LF . LF` as the
# end of DATA: smuggle-lf-dot-lf fails against it, and the baseline says so.
#
# Debian's opensmtpd package conflicts with postfix (both are the mail transport agent), so the
# package is not installed: its files are unpacked under target/peers/opensmtpd (apt-get
# download, dpkg -x) and its libraries and two system users (opensmtpd, opensmtpq) added. As
# root; OpenSMTPD's queue is its compiled-in /var/spool/smtpd, emptied before and after.
#
#   scenarios/opensmtpd.sh                     # the portable scenarios, against the baseline
#   scenarios/opensmtpd.sh --no-baseline       # every finding counts (the full picture)
#   scenarios/opensmtpd.sh --filter smuggle --junit opensmtpd.xml
#   scenarios/opensmtpd.sh --prepare           # unpack it and add its users, run nothing
#
# Extra arguments go to `smtp-relay scenarios`; SMTP_RELAY_BIN names a binary to use instead
# of building one; KEEP=1 keeps the temporary directory (the config and OpenSMTPD's log).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-27135}    # OpenSMTPD listens here (the relay under test)
UPORT=${UPORT:-27136}  # the fake upstream listens here; OpenSMTPD relays to it

# shellcheck source=../benches/postfix-relay.sh
. benches/postfix-relay.sh

peer=$PWD/target/peers/opensmtpd
smtpd=$peer/usr/sbin/smtpd
smtpctl=$peer/usr/sbin/smtpctl
if [ ! -x "$smtpd" ]; then
  echo "unpacking Debian's opensmtpd under $peer..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libevent-2.1-7 libdb5.3 libssl3 \
    libpam0g libcrypt1 zlib1g >/dev/null
  rm -rf "$peer" && mkdir -p "$peer"
  (cd "$peer" && apt-get download -qq -o APT::Sandbox::User=root opensmtpd >/dev/null && dpkg -x opensmtpd_*.deb .)
fi
for u in opensmtpd opensmtpq; do
  getent passwd "$u" >/dev/null ||
    useradd --system --no-create-home --home-dir /var/empty --shell /usr/sbin/nologin "$u"
done
{ "$smtpd" -h 2>&1 || true; } | head -n 1 >&2
# --prepare: only install (CI does it before running the peers at once, one apt at a time).
[ "${1:-}" = --prepare ] && exit 0

# Its queue and control socket are compiled-in paths: a system OpenSMTPD would share them.
if pgrep -x smtpd >/dev/null 2>&1 || [ -S /var/run/smtpd.sock ]; then
  echo "an OpenSMTPD is already running here (or /var/run/smtpd.sock exists): stop it first;" \
    "this script uses /var/spool/smtpd and /var/run/smtpd.sock" >&2
  exit 2
fi

tmp=$(mktemp -d /tmp/smtp-relay-opensmtpd.XXXXXX)
smtpd_pid=
stop() {
  if [ -n "$smtpd_pid" ]; then
    kill "$smtpd_pid" 2>/dev/null || true
    wait "$smtpd_pid" 2>/dev/null || true
  fi
  rm -rf /var/spool/smtpd
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap stop EXIT

cat >"$tmp/smtpd.conf" <<CONF
# OpenSMTPD as a plain relay to the fake upstream (no TLS towards it: the scenarios read the
# upstream's side in clear).
listen on 127.0.0.1 port $PORT hostname relay.opensmtpd.test
action "upstream" relay host "smtp+notls://127.0.0.1:$UPORT"
match from any for any action "upstream"
CONF
chmod 600 "$tmp/smtpd.conf"
# Its processes chroot here (compiled in); the package's scripts would have made it.
mkdir -p /var/lib/opensmtpd/empty
"$smtpd" -n -f "$tmp/smtpd.conf" >&2
rm -rf /var/spool/smtpd
"$smtpd" -d -f "$tmp/smtpd.conf" >"$tmp/smtpd.log" 2>&1 &
smtpd_pid=$!
wait_port "$PORT"

# shellcheck source=profile.sh
. scenarios/profile.sh
run_profile OpenSMTPD "$tmp/smtpd.log" opensmtpd "$@"
