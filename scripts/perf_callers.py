#!/usr/bin/env python3
"""Where a profile's CPU went, function by function, from a perf call-graph profile.

    perf record -a --call-graph dwarf,16384 -F 199 -o perf.data -- sleep 8
    perf script -i perf.data -F comm,ip,sym --no-inline > perf.txt
    python3 scripts/perf_callers.py perf.txt 'gossipnet::output::Output::write_pending' ...

For each function named, prints the share of all samples that have it on their stack
(inclusive), then the functions it called directly, each with its share of all samples
("(self)": samples in the function itself). A name may be prefixed with 'COMM|' to count only
the samples of threads whose name starts with COMM (e.g. 'timers|...'). With no function
named, prints the samples' shares by thread name.
"""
import collections
import sys


def samples(path):
    out, cur = [], None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                if cur:
                    out.append(cur)
                cur = None
            elif not line.startswith(("\t", " ")):
                cur = (line.strip(), [])
            elif cur:
                parts = line.strip().split(None, 1)
                if len(parts) > 1:
                    cur[1].append(parts[1])
    if cur:
        out.append(cur)
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    all_ = samples(sys.argv[1])
    total = len(all_)
    if total == 0:
        sys.exit("no samples in " + sys.argv[1])
    if len(sys.argv) == 2:
        by_comm = collections.Counter(s[0].split()[0] for s in all_)
        for comm, n in by_comm.most_common(12):
            print(f"{100 * n / total:5.1f}%  {comm}")
        return
    for arg in sys.argv[2:]:
        comm, _, func = arg.rpartition("|")
        callees, on_stack = collections.Counter(), 0
        for c, stack in all_:
            if not c.startswith(comm) or func not in stack:
                continue
            on_stack += 1
            i = stack.index(func)  # the stack is leaf first
            callees[stack[i - 1] if i > 0 else "(self)"] += 1
        print(f"== {arg}: {100 * on_stack / total:.1f}% of {total} samples")
        for f, n in callees.most_common(12):
            print(f"{100 * n / total:6.2f}%  {f[:140]}")


if __name__ == "__main__":
    main()
