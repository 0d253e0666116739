#!/usr/bin/env python3
"""Time to reach all, by when messages were generated: for a run directory of
`bench latency` / `bench throughput` (or scripts/demo.sh), prints per half second how
many messages were generated, the median and the slowest time to reach every peer that
logged the message. Shows whether a load came evenly or in bursts.

    python3 scripts/latency_by_time.py RUN_DIR [min_receivers]

Only messages received by at least min_receivers peers count (default: all peers but
one, so messages generated while others were still joining are left out)."""
import collections
import glob
import json
import sys

run = sys.argv[1]
files = glob.glob(run + "/peer-*.jsonl")
need = int(sys.argv[2]) if len(sys.argv) > 2 else max(1, len(files) - 1)
sent, received = {}, collections.defaultdict(dict)
for f in files:
    for line in open(f):
        if '"gossip_sent"' in line or '"gossip_received"' in line:
            e = json.loads(line)
            if e["event"] == "gossip_sent":
                sent[e["id"]] = e["ts_us"]
            else:
                received[e["id"]][e["node"]] = e["ts_us"]
rows = sorted(
    (t, (max(received[i].values()) - t) / 1000)
    for i, t in sent.items()
    if len(received[i]) >= need
)
if not rows:
    sys.exit("no message reached enough peers")
t0 = rows[0][0]
buckets = collections.defaultdict(list)
for t, ms in rows:
    buckets[int((t - t0) / 500_000)].append(ms)
print("from first (s)  generated  median ms  slowest ms")
for k in sorted(buckets):
    v = sorted(buckets[k])
    print(f"{k * 0.5:14.1f}  {len(v):9d}  {v[len(v) // 2]:9.0f}  {v[-1]:10.0f}")
