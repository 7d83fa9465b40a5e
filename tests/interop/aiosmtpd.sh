#!/usr/bin/env bash
# The relay against aiosmtpd, a real SMTP server of the kind users run internally, with the
# certificates they make with openssl: one from `openssl req -x509` (CA:TRUE, self-signed),
# one from a private CA, one for the wrong name, an expired one, and no TLS at all. Each TLS
# policy (verify with ca, fingerprint pinned from what `smtp-relay check-tls` printed, encrypt,
# may, and verify refusing) is a route of one relay; Python's smtplib sends through it with
# AUTH passed through to aiosmtpd (its 235 2.7.0 and 535 5.7.8 back verbatim). Installs
# aiosmtpd (pip) and faketime (apt, to sign the expired certificate) when missing.
#
# Usage: tests/interop/aiosmtpd.sh   (SMTP_RELAY_BIN: the binary, default target/debug)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
BIN=${SMTP_RELAY_BIN:-./target/debug/smtp-relay}
[ -x "$BIN" ] || cargo build --locked -q

python3 -c 'import aiosmtpd' 2>/dev/null || pip install -q --disable-pip-version-check aiosmtpd
# shellcheck source=../../benches/postfix-relay.sh
. benches/postfix-relay.sh   # need_packages: apt-get install of what is missing
need_packages faketime openssl

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"

echo "== certificates, made with openssl as users make them"
quiet() { "$@" >/dev/null 2>&1 || { echo "failed: $*"; "$@"; exit 1; }; }
# Self-signed, CA:TRUE by default: the certificate of issue 13.
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ss.key -out ss.pem
# A private CA and leaves it signs.
quiet openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Example Internal CA" \
  -keyout ca.key -out ca.pem
leaf() { # name, subjectAltName, [faketime date]
  quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$1.key" -out "$1.csr"
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$2" >"$1.ext"
  local sign=(openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial
    -days 365 -extfile "$1.ext" -out "$1.pem")
  if [ -n "${3:-}" ]; then quiet faketime "$3" "${sign[@]}"; else quiet "${sign[@]}"; fi
}
leaf priv DNS:localhost,IP:127.0.0.1
leaf wrong DNS:mail.internal.example
leaf exp DNS:localhost,IP:127.0.0.1 "2019-01-01 00:00:00"
openssl x509 -in ss.pem -noout -text | grep -q 'CA:TRUE'
openssl x509 -in exp.pem -noout -enddate

echo "== aiosmtpd listeners"
python3 "$here/aiosmtpd_servers.py" "$tmp/out" \
  ss-auth:ss.pem:ss.key:alice@corp.test=alice-code \
  ss:ss.pem:ss.key: priv:priv.pem:priv.key: wrong:wrong.pem:wrong.key: \
  exp:exp.pem:exp.key: plain::: >servers.out 2>servers.err &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^ready' servers.out && break; sleep 0.1; done
grep -q '^ready' servers.out || { cat servers.out servers.err; exit 1; }
port() { awk -v n="$1" '$1 == n { print $2 }' servers.out; }
cat servers.out

echo "== check-tls: what each server presents, exit 1 until trusted, 0 with its ca, 2 when closed"
status() { set +e; "$@" >"$tmp/check.out" 2>&1; echo $?; set -e; }
code=$(status "$OLDPWD/$BIN" check-tls "localhost:$(port ss)")
[ "$code" = 1 ] || { cat check.out; echo "check-tls on the self-signed server: exit $code, expected 1"; exit 1; }
grep -q 'CA flag:    CA:TRUE' check.out
pin_ss=$(grep -m1 '^    fingerprints = \["' check.out | cut -d'"' -f2)
code=$(status "$OLDPWD/$BIN" check-tls "localhost:$(port ss)" --ca ss.pem)
[ "$code" = 0 ] || { cat check.out; echo "check-tls with --ca ss.pem: exit $code, expected 0"; exit 1; }
code=$(status "$OLDPWD/$BIN" check-tls "localhost:$(port exp)" --ca ca.pem)
[ "$code" = 1 ] && grep -q '(EXPIRED)' check.out || { cat check.out; exit 1; }
pin_exp=$(grep -m1 '^    fingerprints = \["' check.out | cut -d'"' -f2)
code=$(status "$OLDPWD/$BIN" check-tls "localhost:$(port plain)")
[ "$code" = 1 ] && grep -q 'TLS: none' check.out || { cat check.out; exit 1; }
closed=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
code=$(status "$OLDPWD/$BIN" check-tls "127.0.0.1:$closed")
[ "$code" = 2 ] || { cat check.out; echo "check-tls on a closed port: exit $code, expected 2"; exit 1; }
echo "check-tls: exit 1 / 0 / 1 / 1 / 2 as expected; pins $pin_ss, $pin_exp"

echo "== the relay, one route per policy"
route() { # name, listener, extra lines
  printf '\n[[routes]]\nname = "%s"\ndomains = ["%s.test"]\nhost = "localhost"\nport = %s\ntls = "starttls"\n%s\n' \
    "$1" "$1" "$(port "$2")" "${3:-}"
}
{
  cat <<TOML
hostname = "relay.test"
listen = "127.0.0.1:0"
spool_dir = "spool"
log_dir = "log"

[auth]
mode = "passthrough"

[limits]
auth_failure_delay_ms = 0

[upstream]
host = "localhost"
port = $(port ss-auth)
tls = "starttls"
ca = "ss.pem"
TOML
  route pinned ss "tls_policy = \"fingerprint\"
fingerprints = [\"$pin_ss\"]"
  route untrusted ss
  route private priv 'ca = "ca.pem"'
  route wrongname wrong 'ca = "ca.pem"'
  route renamed wrong 'ca = "ca.pem"
server_name = "mail.internal.example"'
  route expired exp 'ca = "ca.pem"'
  route expiredpin exp "tls_policy = \"fingerprint\"
fingerprints = [\"$pin_exp\"]"
  route encrypt ss 'tls_policy = "encrypt"'
  route may plain 'tls_policy = "may"'
  route maytls ss 'tls_policy = "may"'
} >relay.toml
"$OLDPWD/$BIN" serve --config relay.toml >relay.out 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q 'relay on ' relay.out && break; sleep 0.1; done
relay_port=$(grep -o 'relay on 127.0.0.1:[0-9]*' relay.out | cut -d: -f2) || { cat relay.out; exit 1; }
grep -q 'tls_policy = "encrypt"' relay.out log/relay.log 2>/dev/null \
  || { echo "no warning for the encrypt route at start"; cat relay.out; exit 1; }

echo "== smtplib through the relay"
python3 "$here/send.py" "$relay_port" "$tmp/out" alice@corp.test alice-code \
  || { cat relay.out; tail -n 40 log/relay.log; exit 1; }
grep -q 'Fix: ' log/relay.log \
  || { echo "no TLS failure with its fix in the relay's log"; tail -n 40 log/relay.log; exit 1; }
grep -m1 'Fix: ' log/relay.log | cut -c1-400
echo "aiosmtpd interop: passed"
