#!/usr/bin/env python3
"""One line per ironhub-bench result file (JSON written by --out): the figures docs/benchmarks.md
tables quote. Usage: bench/scripts/summarize.py bench-out/*.json"""
import json
import sys


def ms(us):
    return f"{us / 1000:.2f} ms" if us < 1_000_000 else f"{us / 1e6:.2f} s"


def cpu(p):
    v = p.get("percent_of_core")
    return "?" if v is None else f"{v:.0f} %"


for path in sys.argv[1:]:
    r = json.load(open(path))
    lat = r["latency"]
    brokers = " / ".join(f"{cpu(b)} (pid {b['pid']})" for b in r["cpu"]["brokers"])
    line = (
        f"{path}: {r['scenario']} {r['broker']} qos{r['qos']} pubs {r['publishers']} subs {r['subscribers']}"
        f" idle {r['idle_clients']} workers {r['workers']} | out {r['out_per_s']:,.0f}/s in {r['in_per_s']:,.0f}/s"
        f" sent {r['sent']} acked {r['acked']} recv {r['received']}/{r['expected']}"
        f" lost/dup/ooo {r['lost']}/{r['duplicated']}/{r['out_of_order']}"
        f" | p50 {ms(lat['p50_us'])} p99 {ms(lat['p99_us'])} p99.9 {ms(lat['p999_us'])}"
        f" | conn {r['connected']}/{r['connect_attempts']} {r['connects_per_s']:,.0f}/s"
        f" conn p50 {ms(r['connect_latency']['p50_us'])} p99 {ms(r['connect_latency']['p99_us'])}"
        f" | bench cpu {cpu(r['cpu']['bench'])} broker cpu {brokers}"
    )
    for m in r.get("broker_rss", []):
        per = m.get("bytes_per_connection")
        if per is not None and r["connected"] > 0:
            line += f" | rss pid {m['pid']} {m['before_kib'] / 1024:.1f}->{m['connected_kib'] / 1024:.1f} MiB {per / 1024:.1f} KiB/conn"
    if r["errors"]:
        line += f" | errors {r['errors']}"
    print(line)
