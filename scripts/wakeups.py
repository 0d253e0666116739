#!/usr/bin/env python3
"""Where one hop's time goes on this machine: reads a scheduler and system-call trace of
running peers and prints, over the peers' link threads,

- processing: from a receive that returned data to the thread's next send (decoding, the
  core's work, queuing);
- a send's own time (on loopback it runs the receiver's TCP path and wakes its reader);
- after the sends: from the last send to the thread's next receive (the output records);
- wake-up to running: from a send waking another peer's reader to that reader running, split
  by whether the reader was woken onto the sender's own CPU or another one.

Record the trace while a network runs (root needed), then give its text to this script:

    perf record -e sched:sched_switch,sched:sched_wakeup,raw_syscalls:sys_enter,raw_syscalls:sys_exit \\
        -a -o trace.data -- sleep 8
    perf script -i trace.data -F comm,tid,cpu,time,event,trace > trace.txt
    python3 scripts/wakeups.py trace.txt

Tracing every system call slows each one by a few microseconds: compare the parts with each
other, not with untraced figures. System call numbers are x86-64's (recvfrom 45, sendmsg 46).
"""
import re
import sys

RECV, SEND = 45, 46
LINK_THREADS = {"dial-then-read", "read-accepted"}
PEER_THREADS = LINK_THREADS | {"timers", "writer", "flusher"}
LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
WAKEUP = re.compile(r"comm=(\S+) pid=(\d+) prio=\d+ target_cpu=(\d+)")
SWITCH = re.compile(r"next_comm=(\S+) next_pid=(\d+)")


def pct(v):
    v = sorted(v)
    if not v:
        return "none"
    n = len(v)
    return "n %d, p10 %.0f / p50 %.0f / p90 %.0f us" % (n, v[n // 10], v[n // 2], v[9 * n // 10])


if len(sys.argv) != 2:
    sys.exit(__doc__)
got_data, sending, sent_at = {}, {}, {}
woken = {}
processing, send_time, after_sends, same_cpu, other_cpu = [], [], [], [], []
for line in open(sys.argv[1]):
    m = LINE.match(line)
    if not m:
        continue
    comm, tid, cpu, t, event, rest = m.groups()
    comm, tid, cpu, t = comm.strip(), int(tid), int(cpu), float(t) * 1e6
    if event == "raw_syscalls:sys_enter":
        if comm not in PEER_THREADS:
            continue
        nr = int(rest.split()[1])
        if nr == SEND:
            if tid in got_data:
                processing.append(t - got_data.pop(tid))
            sending[tid] = t
        elif nr == RECV and tid in sent_at:
            after_sends.append(t - sent_at.pop(tid))
    elif event == "raw_syscalls:sys_exit":
        if comm not in PEER_THREADS:
            continue
        nr, ret = int(rest.split()[1]), int(rest.split("=")[1])
        if nr == RECV and ret > 0:
            got_data[tid] = t
        elif nr == SEND and tid in sending:
            send_time.append(t - sending.pop(tid))
            sent_at[tid] = t
    elif event == "sched:sched_wakeup":
        w = WAKEUP.search(rest)
        if w and w.group(1) in LINK_THREADS and comm in PEER_THREADS and tid in sending:
            woken[int(w.group(2))] = (t, int(w.group(3)) == cpu)
    elif event == "sched:sched_switch":
        s = SWITCH.search(rest)
        if s and int(s.group(2)) in woken:
            at, same = woken.pop(int(s.group(2)))
            (same_cpu if same else other_cpu).append(t - at)
print("processing (receive to first send):", pct(processing))
print("one send:", pct(send_time))
print("after the sends (last send to next receive):", pct(after_sends))
print("wake-up to running, on the sender's CPU:", pct(same_cpu))
print("wake-up to running, on another CPU:", pct(other_cpu))
