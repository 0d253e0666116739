#!/usr/bin/env python3
"""Which peers fall behind, and when: for a run directory of `bench throughput` (or
scripts/demo.sh), prints per second of the run the deliveries that second, the network's
median and 99th-percentile delivery delay (receipt time minus the generation time in the
message's text), and the median delay of the peers furthest behind, by port. Shows a few
peers drifting seconds behind while the rest keep up.

    python3 scripts/peer_lag.py RUN_DIR [peers_to_show]

peers_to_show (default 3): the peers with the largest median delay over the run."""
import collections
import glob
import json
import statistics
import sys

run = sys.argv[1]
show = int(sys.argv[2]) if len(sys.argv) > 2 else 3
# second of the run -> peer port -> delays (ms)
delays = collections.defaultdict(lambda: collections.defaultdict(list))
for f in glob.glob(run + "/peer-*.jsonl"):
    port = f.rsplit("-", 1)[1][: -len(".jsonl")]
    for line in open(f):
        if '"gossip_received"' not in line:
            continue
        e = json.loads(line)
        at_ms = e["ts_us"] / 1000
        delays[int(at_ms // 1000)][port].append(at_ms - int(e["text"].split(":")[0]))
if not delays:
    sys.exit("no gossip_received events in " + run)
overall = collections.defaultdict(list)
for per_peer in delays.values():
    for port, d in per_peer.items():
        overall[port].extend(d)
worst = sorted(overall, key=lambda p: statistics.median(overall[p]), reverse=True)[:show]
t0 = min(delays)
print("second  deliveries  p50 ms  p99 ms  | median ms of " + " ".join(worst))
for s in sorted(delays):
    every = sorted(x for d in delays[s].values() for x in d)
    cols = " ".join(
        "%6.0f" % statistics.median(delays[s][p]) if delays[s].get(p) else "     -" for p in worst
    )
    print("%6d  %10d  %6.0f  %6.0f  | %s" % (
        s - t0, len(every), every[len(every) // 2], every[int(0.99 * (len(every) - 1))], cols))
