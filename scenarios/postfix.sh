#!/usr/bin/env bash
# Runs the portable scenarios (those tagged `portable`: no policy of smtp-relay's own) against
# Postfix configured as a relay, to show how `smtp-relay scenarios --relay` tests a relay that
# is not ours. Installs postfix when it is missing (Debian/Ubuntu, as root), writes a
# self-contained Postfix configuration under a temporary directory (its own queue, port and
# log; the system's Postfix is not touched), starts it, runs the scenarios, stops it.
#
#   scenarios/postfix.sh                 # all portable scenarios
#   scenarios/postfix.sh --filter smuggle --junit postfix.xml
#
# Extra arguments go to `smtp-relay scenarios`; SMTP_RELAY_BIN names a binary to use instead
# of building one; KEEP=1 keeps the temporary directory (Postfix's config, queue and log).
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${PORT:-27125}    # Postfix's smtpd listens here (the relay under test)
UPORT=${UPORT:-27126}  # the fake upstream listens here; Postfix's relayhost

if ! [ -x /usr/sbin/postfix ]; then
  echo "installing postfix..." >&2
  apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
  echo "scenarios/postfix.sh: Postfix's master must start as root" >&2
  exit 2
fi

tmp=$(mktemp -d /tmp/smtp-relay-postfix.XXXXXX)
chmod 755 "$tmp"
conf=$tmp/conf
mkdir -p "$conf" "$tmp/queue" "$tmp/data"
chown postfix:postfix "$tmp/data"
cat >"$conf/main.cf" <<MAIN
compatibility_level = 3.6
queue_directory = $tmp/queue
data_directory = $tmp/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.relay.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$UPORT
relay_domains =
smtpd_relay_restrictions = permit_mynetworks, reject
# Leave the messages of 127.0.0.1 as they are (no Message-ID, Date or From added).
local_header_rewrite_clients =
smtpd_recipient_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Postfix 3.7.10+: refuse bare LF (SMTP smuggling); 3.9 normalises by default.
smtpd_forbid_bare_newline = yes
smtpd_forbid_bare_newline_exclusions =
# Logs go to the standard output of start-fg, below, into \$tmp/maillog.
maillog_file = /dev/stdout
# Deliver at once, retry fast: the scenarios wait seconds, not minutes.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_connect_timeout = 5s
MAIN
cat >"$conf/master.cf" <<MASTER
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
MASTER

stop() {
  /usr/sbin/postfix -c "$conf" stop >/dev/null 2>&1 || true
  sleep 0.5
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap stop EXIT
/usr/sbin/postfix -c "$conf" start-fg >"$tmp/maillog" 2>&1 &
started=
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then started=1; break; fi
  sleep 0.1
done
if [ -z "$started" ]; then
  echo "scenarios/postfix.sh: Postfix did not start; its log:" >&2
  cat "$tmp/maillog" >&2
  exit 2
fi

# SMTP_RELAY_BIN: a smtp-relay binary already built (CI passes its debug build).
bin=${SMTP_RELAY_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -q --bin smtp-relay
  bin=./target/release/smtp-relay
fi
status=0
"$bin" scenarios scenarios \
  --relay "127.0.0.1:$PORT" --upstream-listen "127.0.0.1:$UPORT" "$@" || status=$?
if [ "$status" != 0 ]; then
  echo "--- Postfix's log:" >&2
  tail -n 40 "$tmp/maillog" >&2 || true
fi
exit "$status"
