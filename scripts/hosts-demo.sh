#!/usr/bin/env bash
# The demo across hosts: scripts/demo.sh on four hosts built as network namespaces (seeds on one,
# peers spread over three others, each host with its own private address inside those
# namespaces), with the same live line and report. Needs root and `ip` (iproute2).
#
#   scripts/hosts-demo.sh [demo.sh options, e.g. --fast --peers 9 --kill 2]   # --hosts H to change 4
set -eu
if [[ $(id -u) != 0 ]]; then
  echo "hosts-demo.sh: building hosts (network namespaces) needs root; try sudo $0 $*" >&2
  exit 2
fi
if ! command -v ip >/dev/null; then
  echo "hosts-demo.sh: needs ip (apt-get install iproute2)" >&2
  exit 2
fi
exec "$(dirname "$0")/demo.sh" --hosts 4 "$@"
