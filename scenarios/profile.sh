# Shared by the relay profiles (postfix.sh, opensmtpd.sh, aiosmtpd-proxy.sh, haraka.sh):
#
#   run_profile NAME LOG BASELINE [ARGS...]
#
# runs the portable scenarios against the relay on 127.0.0.1:$PORT with the fake upstream on
# 127.0.0.1:$UPORT, against scenarios/relays/BASELINE.expected unless ARGS has --no-baseline
# (the other ARGS go to `smtp-relay scenarios`), and on failure prints the end of LOG (NAME's
# log). SMTP_RELAY_BIN names a binary to use instead of building one. Returns the run's status.
run_profile() {
  local name=$1 log=$2 expected=$3
  shift 3
  local bin=${SMTP_RELAY_BIN:-}
  if [ -z "$bin" ]; then
    cargo build --release -q --bin smtp-relay
    bin=./target/release/smtp-relay
  fi
  local baseline=(--baseline "scenarios/relays/$expected.expected") args=() a
  for a in "$@"; do
    if [ "$a" = --no-baseline ]; then baseline=(); else args+=("$a"); fi
  done
  local status=0
  "$bin" scenarios scenarios \
    --relay "127.0.0.1:$PORT" --upstream-listen "127.0.0.1:$UPORT" \
    ${baseline[@]+"${baseline[@]}"} ${args[@]+"${args[@]}"} || status=$?
  if [ "$status" != 0 ]; then
    echo "--- $name's log:" >&2
    tail -n 40 "$log" >&2 || true
  fi
  return "$status"
}
