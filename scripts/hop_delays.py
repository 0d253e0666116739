#!/usr/bin/env python3
"""Where the time to reach all goes: for a run directory of `bench latency` /
`bench throughput` (or scripts/demo.sh), prints

- hops: the delay of each link an item crossed on its first arrival (from the sender's own
  first receipt, or generation, to ours), as percentiles;
- depth: how many links each first arrival crossed from the origin (the path the item
  actually took, against the overlay's diameter that `bench` prints);
- the items whose last receipt by gossip came over 50 ms after they were generated: when
  they were generated (seconds from the first), and how many receipts were that late
  (catch-up receipts, by peers that joined after the item spread, are left out).

    python3 scripts/hop_delays.py RUN_DIR [--after SECONDS]

With --after, only the items generated more than SECONDS after the first one count (say the
items generated once every peer had joined, leaving out the tree's forming).

Only first receipts by gossip (not `via: "sync"`) count as hops; the records' `ts_us` (taken
when the frame was read) are compared, so every peer must log to the same clock (one host).
"""
import glob
import json
import sys


def pct(v, q):
    return v[min(len(v) - 1, int(len(v) * q))]


args = sys.argv[1:]
after = None
if len(args) == 3 and args[1] == "--after":
    after = float(args[2])
    args = args[:1]
if len(args) != 1:
    sys.exit(__doc__)
run = args[0]
at, parent, generated, via = {}, {}, {}, {}
for f in glob.glob(run + "/peer-*.jsonl"):
    for line in open(f):
        if '"gossip_sent"' not in line and '"gossip_received"' not in line:
            continue
        e = json.loads(line)
        key = (e["node"], e["id"])
        at[key] = e["ts_us"]
        if e["event"] == "gossip_sent":
            generated[e["id"]] = e["ts_us"]
        else:
            parent[key] = e.get("from")
            via[key] = e.get("via", "gossip")
if not generated:
    sys.exit("no gossip_sent records in " + run)
if after is not None:
    first = min(generated.values())
    kept = {i for i, t in generated.items() if t - first > after * 1e6}
    at = {k: v for k, v in at.items() if k[1] in kept}
    parent = {k: v for k, v in parent.items() if k[1] in kept}
    via = {k: v for k, v in via.items() if k[1] in kept}
    generated = {i: t for i, t in generated.items() if i in kept}
    if not generated:
        sys.exit(f"no items generated more than {after} s after the first")

hops = sorted(
    (at[k] - at[(p, k[1])]) / 1000
    for k, p in parent.items()
    if via[k] != "sync" and (p, k[1]) in at
)
depth = {}


def depth_of(key):
    """Links from the origin to `key`'s first receipt; None where the chain leaves the
    records (catch-up, or a sender that logged nothing)."""
    path = []
    while key not in depth:
        if key not in parent:  # generated here
            depth[key] = 0 if key in at else None
            break
        if via[key] == "sync":
            depth[key] = None
            break
        path.append(key)
        key = (parent[key], key[1])
    d = depth[key]
    for k in reversed(path):
        d = None if d is None else d + 1
        depth[k] = d
    return d


depths = sorted(d for k in parent if (d := depth_of(k)) is not None and d > 0)
print(f"first receipts by gossip: {len(hops)}; by catch-up: "
      f"{sum(1 for v in via.values() if v == 'sync')}")
if hops:
    print("link delay on first arrival: p10 %.2f  p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms"
          % (pct(hops, 0.1), pct(hops, 0.5), pct(hops, 0.9), pct(hops, 0.99), hops[-1]))
if depths:
    print("links crossed from the origin: p50 %d  p99 %d  max %d"
          % (pct(depths, 0.5), pct(depths, 0.99), depths[-1]))

t0 = min(generated.values())
by_item = {}
for (node, i), v in via.items():
    if v != "sync" and i in generated:
        by_item.setdefault(i, []).append(at[(node, i)] - generated[i])
rows = sorted(
    ((max(dts) / 1000, (generated[i] - t0) / 1e6, sum(1 for d in dts if d > 50_000))
     for i, dts in by_item.items()),
    reverse=True,
)
over = [r for r in rows if r[0] > 50]
print(f"items whose last receipt by gossip came over 50 ms after generation: {len(over)} of "
      f"{len(rows)}, generated at (s from the first): "
      + " ".join("%.1f" % r[1] for r in sorted(over, key=lambda r: r[1])))
print("slowest (last receipt by gossip ms, generated at s, receipts over 50 ms):")
for r in rows[:5]:
    print("  %8.1f  %7.2f  %4d" % r)
