#!/usr/bin/env python3
"""The report of benches/peers.sh: medians and min-max over the interleaved rounds.

    peers-report.py CELLS OPEN EXTRAS ROUNDS DURATION [JSON]

CELLS holds one measurement per line (round, workload, system, msgs/s, p50 ms, p99 ms, failed),
OPEN the open-loop measurements (round, system, p50 ms, p99 ms), EXTRAS key/value figures.
Ratios are taken within a round (a system against direct and against HAProxy measured in the
same round), then their median: a slow round slows every system in it. Prints the tables; with
JSON, writes every cell and every summary there so that a machine can check the targets.
"""
import datetime
import json
import os
import platform
import statistics
import sys


def rows(path, fields):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != len(fields):
                continue
            out.append({k: conv(v) for (k, conv), v in zip(fields, parts)})
    return out


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(s, digits=0, width=0):
    if s is None:
        return "-".rjust(width)
    text = f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"
    return text.rjust(width)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


def main():
    cells_path, open_path, extras_path, rounds, duration = sys.argv[1:6]
    json_path = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] else None
    cells = rows(cells_path, [("round", int), ("workload", str), ("system", str),
                              ("msgs_per_s", float), ("p50_ms", float), ("p99_ms", float),
                              ("failed", int)])
    by = {(c["round"], c["workload"], c["system"]): c for c in cells}
    for c in cells:
        for ref, key in (("direct", "vs_direct"), ("haproxy", "vs_haproxy")):
            r = by.get((c["round"], c["workload"], ref))
            c[key] = c["msgs_per_s"] / r["msgs_per_s"] if r and r["msgs_per_s"] > 0 else None

    workloads = list(dict.fromkeys(c["workload"] for c in cells))
    systems = list(dict.fromkeys(c["system"] for c in cells if c["round"] == 1))
    summary = []
    print(f"{'workload':<15} {'system':<16} {'msgs/s median (min-max)':>26} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'vs direct':>18} {'vs haproxy':>18}  failed")
    for wl in workloads:
        for sy in systems:
            mine = [c for c in cells if c["workload"] == wl and c["system"] == sy]
            if not mine:
                continue
            s = {
                "workload": wl,
                "system": sy,
                "rounds": len(mine),
                "msgs_per_s": spread([c["msgs_per_s"] for c in mine]),
                "p50_ms": spread([c["p50_ms"] for c in mine]),
                "p99_ms": spread([c["p99_ms"] for c in mine]),
                "vs_direct": spread([c["vs_direct"] for c in mine]),
                "vs_haproxy": spread([c["vs_haproxy"] for c in mine]),
                "failed": sum(max(c["failed"], 0) for c in mine),
                "errors": sum(1 for c in mine if c["failed"] < 0),
            }
            summary.append(s)
            note = f"  {s['failed']}" if s["failed"] else ""
            note += f"  ({s['errors']} runs failed to start)" if s["errors"] else ""
            print(f"{wl:<15} {sy:<16} {fmt(s['msgs_per_s'], 0, 26)} {s['p50_ms']['median']:>8.3f}"
                  f" {s['p99_ms']['median']:>8.3f} {fmt(s['vs_direct'], 2, 18)}"
                  f" {fmt(s['vs_haproxy'], 2, 18)}{note}")

    # Store and forward against Postfix (both answer 250 after an fsync): the ratio in each
    # round, then its median.
    queue_vs_postfix = []
    for wl in workloads:
        ratios = []
        for c in cells:
            p = by.get((c["round"], wl, "postfix"))
            if c["workload"] == wl and c["system"] == "relay-queue" and p and p["msgs_per_s"] > 0:
                ratios.append(c["msgs_per_s"] / p["msgs_per_s"])
        if ratios:
            queue_vs_postfix.append({"workload": wl, "ratio": spread(ratios)})
    if queue_vs_postfix:
        print("\nrelay-queue against postfix (both 250 after an fsync), per round, median (min-max):")
        for q in queue_vs_postfix:
            print(f"  {q['workload']:<15} {fmt(q['ratio'], 2)}")

    extras = {}
    for e in rows(extras_path, [("key", str), ("value", float)]):
        extras[e["key"]] = e["value"]
    opened = rows(open_path, [("round", int), ("system", str), ("p50_ms", float), ("p99_ms", float)])
    direct = {o["round"]: o["p99_ms"] for o in opened if o["system"] == "direct"}
    for o in opened:
        d = direct.get(o["round"])
        o["added_p99_ms"] = o["p99_ms"] - d if d is not None else None
    open_summary = []
    if opened:
        print(f"\nopen loop at {extras.get('open_loop_rate', 0):.0f} msgs/s (half the relay's median"
              " maximum, small-100/conn), latency from the intended start:")
        for sy in dict.fromkeys(o["system"] for o in opened):
            mine = [o for o in opened if o["system"] == sy]
            s = {
                "system": sy,
                "p50_ms": spread([o["p50_ms"] for o in mine]),
                "p99_ms": spread([o["p99_ms"] for o in mine]),
                "added_p99_ms": spread([o["added_p99_ms"] for o in mine]),
            }
            open_summary.append(s)
            added = "" if sy == "direct" else f", p99 added {fmt(s['added_p99_ms'], 3)} ms"
            print(f"  {sy:<16} p50 {fmt(s['p50_ms'], 3)} ms, p99 {fmt(s['p99_ms'], 3)} ms{added}")

    if "generator_1_per_conn_smtp_source" in extras:
        print("\nload generators on the same sink (20 sessions, 1 KiB):")
        for per in ("1", "100"):
            ours = extras.get(f"generator_{per}_per_conn_smtp_relay_load", 0)
            theirs = extras.get(f"generator_{per}_per_conn_smtp_source", 0)
            print(f"  {per} per connection: smtp-relay load {ours:.0f} msgs/s, smtp-source {theirs:.0f} msgs/s")
    for key, label in (("idle", "smtp-relay"), ("idle_baseline", "baseline relay")):
        if f"{key}_rss_idle_kib" in extras:
            before, held = extras[f"{key}_rss_before_kib"], extras[f"{key}_rss_idle_kib"]
            print(f"\nidle sessions on {label}: {extras[f'{key}_greeted']:.0f} of 10000 greeted; resident"
                  f" memory {before:.0f} KiB before, {held:.0f} KiB with them ({held - before:.0f} KiB more)")

    if json_path:
        report = {
            "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "rounds": int(rounds),
            "duration_s": float(duration),
            "cells": cells,
            "summary": summary,
            "queue_vs_postfix": queue_vs_postfix,
            "open_loop": {"rate": extras.get("open_loop_rate"), "cells": opened, "summary": open_summary},
            "extras": extras,
        }
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1)
        print(f"\nevery cell in {json_path}")


if __name__ == "__main__":
    main()
