#!/usr/bin/env bash
# The web page of `smtp-relay up` in headless Chromium: installs Debian's chromium, a CJK font
# and playwright-core (npm) when missing, starts `up` on free ports, and runs browser.mjs
# against it. Screenshots land in target/web-shots/ (CI keeps them as artefacts).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
if [ "${#need[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
mods=target/web-browser
if [ ! -d "$mods/node_modules/playwright-core" ]; then
  mkdir -p "$mods"
  npm install --prefix "$mods" --no-save --no-audit --no-fund --silent playwright-core@1 >/dev/null
fi

BIN=${SMTP_RELAY_BIN:-$PWD/target/debug/smtp-relay}
[ -x "$BIN" ] || cargo build --locked -q -p smtp-relay
work=$(mktemp -d)
"$BIN" up --data-dir "$work/data" \
  --listen 127.0.0.1:0 --listen-tls 127.0.0.1:0 \
  --upstream-listen 127.0.0.1:0 --upstream-listen-tls 127.0.0.1:0 --qq-listen 127.0.0.1:0 \
  --web 127.0.0.1:0 >"$work/up.out" 2>&1 &
up_pid=$!
trap 'kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 150); do
  grep -q '^Ctrl-C' "$work/up.out" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.out"; exit 1; }
  sleep 0.2
done
web=$(sed -n 's/^  web page    \(http[^ ]*\).*/\1/p' "$work/up.out")
port=$(sed -n 's/^  relay       127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/up.out")
[ -n "$web" ] && [ -n "$port" ] || { echo "no web page or relay address in:"; cat "$work/up.out"; exit 1; }
# Beside its node_modules: an ES module finds its imports from where it lies.
cp tests/web/browser.mjs "$mods/browser.mjs"
WEB_URL=$web RELAY_PORT=$port CA="$work/data/ca.pem" SHOTS="$PWD/target/web-shots" \
  timeout 120 node "$mods/browser.mjs"
echo "web page in headless Chromium: all checks passed; screenshots in target/web-shots/"
