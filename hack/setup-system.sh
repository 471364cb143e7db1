#!/usr/bin/env bash
# System packages the tests need that no language registry ships: Prometheus (Debian's package; the
# autoscaling tests run a real one). Installed once; a no-op when present.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "[setup-system] prometheus is missing: run 'sudo apt-get install prometheus' (or make test as root)" >&2
  exit 1
fi
echo "[setup-system] installing prometheus from Debian (first run only)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package enables a system service where systemd runs; tests start their own servers.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
