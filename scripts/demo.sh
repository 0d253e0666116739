#!/usr/bin/env bash
# Runs a local gossipnet network on 127.0.0.1 and shows it working.
#
#   scripts/demo.sh [--seeds N] [--peers N] [--kill K] [--fast] [--mode flood|tree|rooted] [--hosts H] [--duration S] [--out DIR]
#
# Builds the release binaries, writes the run's seeds.yaml into the run directory, starts the
# seeds and then the peers, shows live progress on one line, optionally kills K peers mid-run
# (alternating SIGKILL and SIGSTOP, recorded in DIR/faults.jsonl), stops every process it
# started and prints the report (also on Ctrl-C). Every node writes its .txt and .jsonl to DIR.
# Without --duration it ends when every message has reached every peer it was expected at and
# every killed peer has been removed. With --hosts H (root and `ip` needed; scripts/hosts-demo.sh)
# the nodes run on H hosts built as network namespaces on one bridge, each with its own private
# address (10.78.x.y, inside those namespaces only): the seeds on the first, the peers spread
# over the others; the namespaces are deleted at the end.
set -eu

SEEDS=3
PEERS=10
KILL=0
FAST=0
DURATION=""
OUT=""
MODE=flood
HOSTS=0

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "demo.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seeds) need "$@"; SEEDS=$2; shift 2 ;;
    --peers) need "$@"; PEERS=$2; shift 2 ;;
    --kill) need "$@"; KILL=$2; shift 2 ;;
    --fast) FAST=1; shift ;;
    --mode) need "$@"; MODE=$2; shift 2 ;;
    --hosts) need "$@"; HOSTS=$2; shift 2 ;;
    --duration) need "$@"; DURATION=$2; shift 2 ;;
    --out) need "$@"; OUT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
for v in SEEDS PEERS KILL HOSTS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "demo.sh: --${v,,} takes a whole number" >&2; exit 2; }
done
[[ -z "$DURATION" || $DURATION =~ ^[0-9]+$ ]] || { echo "demo.sh: --duration takes whole seconds" >&2; exit 2; }
(( SEEDS >= 1 )) || { echo "demo.sh: at least one seed" >&2; exit 2; }
[[ $MODE == flood || $MODE == tree || $MODE == rooted ]] || { echo "demo.sh: --mode is flood, tree or rooted (gossip.mode)" >&2; exit 2; }
if (( HOSTS )); then
  (( HOSTS >= 2 )) || { echo "demo.sh: --hosts needs at least 2 (seeds on one, peers on the others)" >&2; exit 2; }
  [[ $(id -u) == 0 ]] || { echo "demo.sh: --hosts builds network namespaces and needs root" >&2; exit 2; }
  command -v ip >/dev/null || { echo "demo.sh: --hosts needs ip (iproute2)" >&2; exit 2; }
fi
(( KILL <= PEERS )) || { echo "demo.sh: cannot kill more peers than there are" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/runs/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# GOSSIPNET_BIN: a directory with already-built seed, peer and report binaries (the tests
# use their own build); otherwise build the release binaries here.
if [[ -n "${GOSSIPNET_BIN:-}" ]]; then
  BIN=$GOSSIPNET_BIN
else
  # cargo's own progress stays visible: the first build takes a few minutes.
  echo "building release binaries (cargo build --release)..."
  (cd "$ROOT" && cargo build --release --bin seed --bin peer --bin report)
  BIN=$ROOT/target/release
fi

if (( FAST )); then
  GOSSIP="{ interval: 500ms, count: 10 }"; LIVENESS="{ interval: 1s, misses: 3, probe_timeout: 1s, reply_timeout: 500ms }"
  # The seeds' check of a stopped peer waits for a handshake up to pow.timeout.
  POW="{ difficulty: 16, timeout: 3s }"; STATS="{ interval: 2s }"
  GOSSIP_S=5; DETECT_S=8
else
  GOSSIP="{ interval: 5s, count: 10 }"; LIVENESS="{ interval: 13s, misses: 3 }"
  POW="{ difficulty: 20, timeout: 10s }"; STATS="{ interval: 10s }"
  GOSSIP_S=50; DETECT_S=56
fi
# Without --duration: at most long enough for every message to spread and, only when peers are
# killed, for them to be detected; the run ends earlier once that has happened.
UNTIL_DONE=0
if [[ -z "$DURATION" ]]; then
  UNTIL_DONE=1
  (( KILL > 0 )) || DETECT_S=0
  DURATION=$(( GOSSIP_S + DETECT_S + 8 ))
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Below the kernel's ephemeral range (32768+), so no outgoing connection holds the port.
PORT=$(( 20000 + RANDOM % 12000 ))
next_port() { # sets FREE (not echoed: a subshell would lose the counter)
  while ! port_free "$PORT"; do PORT=$(( PORT + 1 )); done
  FREE=$PORT; PORT=$(( PORT + 1 ))
}

NS_PREFIX="gd$$"
declare -A NS_OF=()
if (( HOSTS )); then
  # Host h is namespace ${NS_PREFIX}h$h at 10.78.<pid % 200>.<h + 1>; seeds on host 0, peers
  # round-robin over the others, each host's ports counting up from 9001 (seeds), 9101 (peers).
  NET="10.78.$(( $$ % 200 ))"
  host_ip() { echo "$NET.$(( $1 + 1 ))"; }
  SEED_ADDRS=(); for ((i = 0; i < SEEDS; i++)); do
    a="$(host_ip 0):$(( 9001 + i ))"; SEED_ADDRS+=("$a"); NS_OF[$a]=${NS_PREFIX}h0; done
  PEER_ADDRS=(); for ((i = 0; i < PEERS; i++)); do
    h=$(( 1 + i % (HOSTS - 1) )); a="$(host_ip $h):$(( 9101 + i / (HOSTS - 1) ))"
    PEER_ADDRS+=("$a"); NS_OF[$a]=${NS_PREFIX}h$h; done
else
  SEED_ADDRS=(); for ((i = 0; i < SEEDS; i++)); do next_port; SEED_ADDRS+=("127.0.0.1:$FREE"); done
  PEER_ADDRS=(); for ((i = 0; i < PEERS; i++)); do next_port; PEER_ADDRS+=("127.0.0.1:$FREE"); done
fi
# Every node's key lives in the run directory; the seeds' public keys go into seeds.yaml, so
# every node authenticates the seeds from the first connection on.
key_file() { echo "$OUT/keys/$1-${2//:/-}.key"; }
{
  echo "seeds:"
  for a in "${SEED_ADDRS[@]}"; do
    k=$("$BIN/seed" --addr "$a" --key-file "$(key_file seed "$a")" --print-key)
    echo "  - { addr: \"$a\", key: \"$k\" }"
  done
  echo "gossip:   ${GOSSIP% \}}, mode: $MODE }"
  echo "liveness: $LIVENESS"
  echo "peer:     { max_neighbours: 4, selection: random }"
  if (( HOSTS )); then echo "limits:   { loopback_exempt: false }"; fi
  echo "pow:      $POW"
  echo "stats:    $STATS"
} > "$OUT/seeds.yaml"

declare -A PID_OF=()
STOPPED=()
ALL_PIDS=()
cleanup() {
  trap - INT TERM EXIT
  printf '\nstopping %d processes...\n' "${#ALL_PIDS[@]}"
  for pid in "${STOPPED[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${ALL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0; for pid in "${ALL_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break; sleep 0.1
  done
  for pid in "${ALL_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if (( HOSTS )); then
    for ((h = 0; h < HOSTS; h++)); do ip netns del "${NS_PREFIX}h$h" 2>/dev/null || true; done
    ip netns del "${NS_PREFIX}br" 2>/dev/null || true
  fi
}
STARTED=0
final_report() {
  echo
  "$BIN/report" "$OUT" || true
  echo
  echo "each node's output: $OUT/<seed|peer>-<ip>-<port>.txt and .jsonl"
}
interrupted() {
  cleanup
  # What ran until the interrupt is a run too: report it (nothing to report before the nodes).
  (( STARTED )) && { printf 'interrupted: the report of what ran so far\n'; final_report; }
  exit 130
}
trap interrupted INT TERM
trap cleanup EXIT

build_hosts() { # one bridge namespace, HOSTS host namespaces each linked to it by a veth pair
  local br=${NS_PREFIX}br h ns
  ip netns add "$br"; ip -n "$br" link add br0 type bridge; ip -n "$br" link set br0 up
  for ((h = 0; h < HOSTS; h++)); do
    ns=${NS_PREFIX}h$h
    ip netns add "$ns"
    ip link add "${NS_PREFIX}a$h" netns "$ns" type veth peer name "${NS_PREFIX}b$h" netns "$br"
    ip -n "$ns" addr add "$(host_ip $h)/24" dev "${NS_PREFIX}a$h"
    ip -n "$ns" link set "${NS_PREFIX}a$h" up; ip -n "$ns" link set lo up
    ip -n "$br" link set "${NS_PREFIX}b$h" master br0; ip -n "$br" link set "${NS_PREFIX}b$h" up
  done
}
if (( HOSTS )); then
  echo "building $HOSTS hosts: network namespaces ${NS_PREFIX}h0..h$(( HOSTS - 1 )) at $NET.1-$HOSTS, seeds on the first"
  build_hosts
fi

start() { # role addr
  ${NS_OF[$2]:+ip netns exec "${NS_OF[$2]}"} "$BIN/$1" --addr "$2" --key-file "$(key_file "$1" "$2")" --config "$OUT/seeds.yaml" --out-dir "$OUT" --log-file "$OUT/$1-${2//:/-}.log" \
    > /dev/null 2>&1 &
  PID_OF[$2]=$!; ALL_PIDS+=($!)
  disown "$!"  # we stop and reap them ourselves; no "Killed" notices from bash
}

echo "run directory: $OUT"
echo "starting ${#SEED_ADDRS[@]} seeds: ${SEED_ADDRS[*]}"
STARTED=1
for a in "${SEED_ADDRS[@]}"; do start seed "$a"; done
sleep 1
echo "starting $PEERS peers"
for a in "${PEER_ADDRS[@]}"; do start peer "$a"; sleep 0.2; done

# Sets variable $2 to a number from the report's one-line JSON (0 when there is nothing to
# report yet), in the shell itself: the live line runs every second beside the network it
# shows, so it starts as few processes as it can.
field() {
  local re="\"$1\":([0-9]+)"
  if [[ $REPORT_JSON =~ $re ]]; then printf -v "$2" '%s' "${BASH_REMATCH[1]}"; else printf -v "$2" 0; fi
}
SENT=0; RECV=0; EXPECTED=0; DEAD=0; JOINED=0
# The live line. Deliveries and expected deliveries are the report's own (`report --json`):
# a message is expected at the peers reachable from its sender when it was sent, so the line
# and the final report count the same thing. `progress T light` skips the report (joining).
# A peer that got its list stays counted as joined, so the files are not read again once all
# have, nor the seeds' removals when nothing is killed.
progress() {
  if (( JOINED < PEERS )); then
    JOINED=$( (grep -l '"event":"peer_list"' "$OUT"/peer-*.jsonl 2>/dev/null || true) | wc -l)
  fi
  if [[ ${2:-} != light ]]; then
    REPORT_JSON=$("$BIN/report" "$OUT" --json 2>/dev/null || true)
    field messages SENT; field deliveries RECV; field expected_deliveries EXPECTED
    if (( KILL > 0 )); then
      DEAD=$( (cat "$OUT"/seed-*.jsonl 2>/dev/null || true) | { grep '"event":"removed"' || true; } \
        | { grep '"reason":"dead"' || true; } | sed 's/.*"peer":"\([^"]*\)".*/\1/' | sort -u | wc -l)
    fi
  fi
  printf '\r[%3ds] peers joined %d/%d | messages %d, delivered %d of %d expected | dead detected %d/%d   ' \
    "$1" "$JOINED" "$PEERS" "$SENT" "$RECV" "$EXPECTED" "$DEAD" "$KILL"
}

# Wait (at most a minute) until every peer has its peer list, so the run's clock and the faults
# start from a complete network.
t=0
while (( t < 600 )); do
  joined=$( (grep -l '"event":"peer_list"' "$OUT"/peer-*.jsonl 2>/dev/null || true) | wc -l)
  (( joined >= PEERS )) && break
  progress 0 light; sleep 0.1; t=$(( t + 1 ))
done

# Faults, alternating SIGKILL and SIGSTOP, a third of the way into the gossip.
KILL_AT=$(( GOSSIP_S / 3 + 1 ))
: > "$OUT/faults.jsonl"
killed=0
for ((t = 0; t < DURATION; t++)); do
  if (( killed < KILL && t >= KILL_AT )); then
    victim=${PEER_ADDRS[$(( PEERS - 1 - killed ))]}
    if (( killed % 2 == 0 )); then sig=KILL; else sig=STOP; fi
    at=$(date +%s%3N)  # before the signal: the fault is no later than this
    kill -"$sig" "${PID_OF[$victim]}"
    [[ $sig == STOP ]] && STOPPED+=("${PID_OF[$victim]}")
    printf '{"ts_ms":%s,"peer":"%s","signal":"%s"}\n' "$at" "$victim" "$sig" >> "$OUT/faults.jsonl"
    printf '\n%s peer %s with SIG%s\n' "$(date +%T)" "$victim" "$sig"
    killed=$(( killed + 1 ))
  fi
  prev_sent=$SENT
  progress "$t"
  # Done: the gossip phase is over and quiet, everything expected arrived, every kill removed.
  if (( UNTIL_DONE && killed == KILL && t > GOSSIP_S && SENT == prev_sent && SENT > 0
        && RECV == EXPECTED && DEAD >= KILL )); then
    break
  fi
  sleep 1
done
progress "$t"
cleanup
trap - EXIT
final_report
