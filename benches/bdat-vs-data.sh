#!/usr/bin/env bash
# BDAT against DATA through the relay: `smtp-relay load --self` (the relay and the sink
# in-process), 1 MB messages, 10 per connection, 4 sessions, pipelining; each round runs DATA
# then BDAT (`--bdat`: the client sends BDAT and the relay sends the sink BDAT), ROUNDS rounds
# (5 by default) interleaved, so that the machine's drift hits both alike. Prints each round,
# then per mode the median and the range of the relay's throughput, of its ratio to the sink
# direct in the same run, and of its p99.
#
#   benches/bdat-vs-data.sh
#   ROUNDS=9 SIZE=65536 benches/bdat-vs-data.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
SIZE=${SIZE:-1048576}
SECS=${SECS:-5}

cargo build --release -q --locked --bin smtp-relay
bin=./target/release/smtp-relay
tmp=$(mktemp -d /tmp/smtp-relay-bdat.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

for round in $(seq 1 "$ROUNDS"); do
  for mode in data bdat; do
    extra=()
    [ "$mode" = bdat ] && extra=(--bdat)
    "$bin" load --self --size "$SIZE" --per-connection 10 --connections 4 --pipelining \
      --duration "$SECS" --quiet --json "$tmp/$mode-$round.json" ${extra[@]+"${extra[@]}"} >/dev/null
    python3 - "$tmp/$mode-$round.json" "$round" "$mode" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
r = {x["name"]: x for x in d["runs"]}
p99 = next(p["p99_ms"] for p in r["relay"]["phases"] if p["phase"] == "message")
print(f'round {sys.argv[2]} {sys.argv[3]:4}  direct {r["direct"]["msgs_per_s"]:6.0f} msgs/s  '
      f'relay {r["relay"]["msgs_per_s"]:6.0f} msgs/s  relay/direct {d["relay_over_direct"]:.2f}  '
      f'relay p99 {p99:.1f} ms')
PY
  done
done | tee "$tmp/rounds.txt"

python3 - "$tmp/rounds.txt" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    w = line.split()
    rows.setdefault(w[2], []).append((float(w[7]), float(w[10]), float(w[13])))
def show(vals, fmt):
    return f'{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}-{fmt.format(max(vals))})'
print()
for mode in ("data", "bdat"):
    v = rows[mode]
    print(f'{mode:4}  relay {show([x[0] for x in v], "{:.0f}")} msgs/s   '
          f'relay/direct {show([x[1] for x in v], "{:.2f}")}   p99 {show([x[2] for x in v], "{:.1f}")} ms')
ratios = [b[0] / a[0] for a, b in zip(rows["data"], rows["bdat"])]
print(f'bdat/data, round by round: median {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})')
PY
