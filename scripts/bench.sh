#!/usr/bin/env bash
# Runs the benchmarks that BENCHMARKS.md reports, on 127.0.0.1 only, and prints the figures
# beside the targets. Takes about 40 minutes on a 2-core machine.
#
#   scripts/bench.sh            # everything
#   scripts/bench.sh quick      # N = 50 only, and the proof of work
set -eu
case "${1:-}" in
  ""|quick) ;;
  *) echo "bench.sh: unknown argument '$1' (nothing, or quick)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
cargo build --release --quiet
cargo build --release --quiet --examples
B=target/release/examples
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "date: $(date -u +%Y-%m-%d)"
echo
$B/bench floor
echo
echo "== proof of work (cargo run --release --example pow_bench -- 20 40)"
$B/pow_bench 20 40
if command -v openssl >/dev/null; then
  # In pow_bench's units. openssl prints thousands of bytes per second. A 64-byte input is
  # one hash of two SHA-256 compressions (its block and the padding block), with OpenSSL's
  # cost per call on top; 16 KiB inputs give the compression rate without that cost.
  for bytes in 64 16384; do
    openssl speed -seconds 3 -bytes "$bytes" -evp sha256 2>/dev/null | tail -1 | awk -v b="$bytes" '{
      k = $2; sub(/k$/, "", k)
      if (b == 64)
        printf "  openssl speed -evp sha256, 64-byte inputs: %.2f M hashes/s = %.2f M compressions/s on one core\n", k * 1000 / 64 / 1e6, k * 1000 / 32 / 1e6
      else
        printf "  openssl speed -evp sha256, 16 KiB inputs: %.2f M compressions/s on one core (the ceiling)\n", k * 1000 / 64 / 1e6 }'
  done
fi
echo
$B/bench latency 50
[ "${1:-}" = quick ] && exit 0
echo
# One peer's CPU per frame, without the scheduling of a whole network.
$B/bench node 200000
echo
$B/bench latency 200
echo
$B/bench --mode tree latency 200
echo
$B/bench --mode rooted latency 200
echo
$B/bench latency 500
echo
for rate in 250 500 1000 1500 3000; do
  $B/bench throughput 100 "$rate"
  echo
done
# Tree and rooted mode side by side with flooding (BENCHMARKS, "Dissemination: flood and tree").
for rate in 1500 3000; do
  $B/bench --mode tree throughput 100 "$rate"
  echo
  $B/bench --mode rooted throughput 100 "$rate"
  echo
done
# Rooted mode's capacity (20 s: the analysis holds every record of a run in memory).
$B/bench --mode rooted throughput 100 6000 --seconds 20
echo
# A late joiner catching up on the whole default history.
$B/bench catchup 100 10000
echo
# N = 200 near its capacity: where the tail of time-to-all is longest.
$B/bench throughput 200 100
echo
$B/bench detection 20
