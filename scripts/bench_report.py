#!/usr/bin/env python3
"""Summarises scripts/bench, scripts/bench-cluster and scripts/bench-shards
results (medians per server and size) as a Markdown table, and writes
docs/bench-fanout.svg:
latency percentiles and deliveries/s against member count (not with
--no-plot). Standard library only.

    scripts/bench_report.py target/bench/results.jsonl [--no-plot]"""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
groups = defaultdict(list)
for row in rows:
    r = row["result"]
    key = (row["server"], r["mode"], r.get("members") or r.get("conns") or 0)
    groups[key].append(r)

def med(values):
    return statistics.median(values) if values else float("nan")

print("| server | test | size | metric | median | runs |")
print("|---|---|---|---|---|---|")
fanout = defaultdict(dict)
def natural(item):
    # "shards=10" after "shards=2".
    (server, mode, size), _ = item
    name, _, number = server.partition("=")
    return (name, int(number) if number.isdigit() else 0, server, mode, size)

for (server, mode, size), results in sorted(groups.items(), key=natural):
    if mode == "fanout":
        cpu = med([r["server_cpu_us_per_delivery"] for r in results])
        ok = all(r["deliveries_received"] == r["deliveries_expected"] for r in results)
        lat = {p: med([r["latency_us"][p] for r in results]) for p in ("p50", "p90", "p99", "max")}
        rate = med([r["deliveries_per_sec"] for r in results])
        fanout[server][size] = (lat, rate)
        print(f"| {server} | fan-out | {size} | server CPU per delivery | {cpu:.2f} µs | {len(results)} |")
        print(f"| {server} | fan-out | {size} | latency p50 / p99 / max | {lat['p50']/1000:.1f} / {lat['p99']/1000:.1f} / {lat['max']/1000:.1f} ms | {len(results)} |")
        print(f"| {server} | fan-out | {size} | deliveries/s | {rate:.0f} | {len(results)} |")
        print(f"| {server} | fan-out | {size} | every delivery received | {'yes' if ok else 'NO'} | {len(results)} |")
        fpw = [r["frames_per_write"] for r in results if r.get("frames_per_write")]
        if fpw:
            print(f"| {server} | fan-out | {size} | frames per socket write | {med(fpw):.1f} | {len(fpw)} |")
        if all("receipt_us" in r for r in results):
            rec = {p: med([r["receipt_us"][p] for r in results]) for p in ("p50", "p99")}
            print(f"| {server} | fan-out | {size} | publish receipt p50 / p99 | {rec['p50']/1000:.2f} / {rec['p99']/1000:.2f} ms | {len(results)} |")
        if any(r.get("engine_cpu_us_per_delivery") for r in results):
            eng = med([r["engine_cpu_us_per_delivery"] for r in results])
            print(f"| {server} | fan-out | {size} | engine (redis-server) CPU per delivery | {eng:.3f} µs | {len(results)} |")
        if all(r.get("redis_commands_per_publish") for r in results):
            ev = med([r["redis_commands_per_publish"]["evalsha"] for r in results])
            al = med([r["redis_commands_per_publish"]["all"] for r in results])
            print(f"| {server} | fan-out | {size} | redis script calls (EVALSHA) / all commands incl. inside scripts, per publish | {ev:.2f} / {al:.2f} | {len(results)} |")
        shares = [r["shard_threads"] for r in results if r.get("shard_threads") and r["shard_threads"]["threads"]]
        if shares:
            # Each shard thread's median share per broadcast, and the spread
            # of those medians over the threads (medians over the runs).
            p50s = [med([t["share_per_broadcast"]["p50"] for t in s["threads"]]) for s in shares]
            lows = [min(t["share_per_broadcast"]["p10"] for t in s["threads"]) for s in shares]
            highs = [max(t["share_per_broadcast"]["p90"] for t in s["threads"]) for s in shares]
            band = sum(s["intervals_all_in_band"] for s in shares) / max(1, sum(s["intervals"] for s in shares))
            lo, hi = shares[0]["band"]
            print(f"| {server} | fan-out | {size} | shard thread's share of server CPU per broadcast: median / lowest p10 / highest p90 | {100*med(p50s):.0f}% / {100*med(lows):.0f}% / {100*med(highs):.0f}% ({len(shares[0]['threads'])} threads; every thread in {100*lo:.0f}–{100*hi:.0f}% in {100*band:.0f}% of broadcasts) | {len(results)} |")
    elif mode == "connects":
        rate = med([r["connects_per_sec"] for r in results])
        cpu = med([r["server_cpu_us_per_connect"] for r in results])
        print(f"| {server} | connects | {size} | connects/s (server CPU per connect) | {rate:.0f} ({cpu:.1f} µs) | {len(results)} |")
    elif mode == "pingpong":
        cpu = med([r["server_cpu_us_per_reply"] for r in results])
        rps = med([r["replies_per_sec"] for r in results])
        print(f"| {server} | ping/pong | {size} conns | server CPU per reply | {cpu:.2f} µs ({rps:.0f} replies/s) | {len(results)} |")
    elif mode == "idle":
        for point in results[0]["points"]:
            n = point["connections"]
            per = med([p["bytes_per_connection"] for r in results for p in r["points"] if p["connections"] == n])
            print(f"| {server} | idle memory | {n} | RSS per connection | {per/1024:.2f} KiB | {len(results)} |")

# A small SVG line chart: one panel for p50/p99 latency, one for deliveries/s.
sizes = sorted({s for server in fanout.values() for s in server})
if len(sizes) >= 2 and "--no-plot" not in sys.argv:
    import math
    W, H, PAD = 720, 300, 50
    def xpos(size):
        lo, hi = math.log10(sizes[0]), math.log10(sizes[-1])
        return PAD + (math.log10(size) - lo) / (hi - lo or 1) * (W / 2 - 2 * PAD)
    def panel(offset, title, series, unit):
        top = max([v for _, pts in series for _, v in pts] + [1])
        out = [f'<text x="{offset + PAD}" y="20" font-size="13">{title}</text>']
        out.append(f'<line x1="{offset+PAD}" y1="{H-PAD}" x2="{offset+W/2-PAD}" y2="{H-PAD}" stroke="black"/>')
        out.append(f'<line x1="{offset+PAD}" y1="{PAD}" x2="{offset+PAD}" y2="{H-PAD}" stroke="black"/>')
        out.append(f'<text x="{offset+5}" y="{PAD}" font-size="10">{top:.0f} {unit}</text>')
        for s in sizes:
            out.append(f'<text x="{offset+xpos(s)-10}" y="{H-PAD+15}" font-size="10">{s}</text>')
        colors = ["#d62728", "#1f77b4", "#ff7f0e", "#2ca02c"]
        for i, (name, pts) in enumerate(series):
            path = " ".join(f"{offset+xpos(s):.1f},{H-PAD-(v/top)*(H-2*PAD):.1f}" for s, v in pts)
            out.append(f'<polyline fill="none" stroke="{colors[i % 4]}" stroke-width="2" points="{path}"/>')
            out.append(f'<text x="{offset+W/2-PAD-140}" y="{PAD+15*i}" font-size="10" fill="{colors[i % 4]}">{name}</text>')
        return out
    lat_series, rate_series = [], []
    for server, by_size in sorted(fanout.items()):
        pts = sorted(by_size.items())
        lat_series.append((f"{server} p50", [(s, v[0]["p50"] / 1000) for s, v in pts]))
        lat_series.append((f"{server} p99", [(s, v[0]["p99"] / 1000) for s, v in pts]))
        rate_series.append((f"{server}", [(s, v[1]) for s, v in pts]))
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}">']
    svg += panel(0, "latency (ms) vs members", lat_series, "ms")
    svg += panel(W / 2, "deliveries/s vs members", rate_series, "/s")
    svg.append("</svg>")
    open("docs/bench-fanout.svg", "w").write("\n".join(svg))
    print("\nwrote docs/bench-fanout.svg")
