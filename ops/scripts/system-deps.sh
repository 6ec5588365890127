#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo need, when missing: redis-server
# (with redis-cli and redis-benchmark), prometheus (promtool), openssl and chromium
# (headless, for the `gpo inspect` page test).
# As root it uses apt-get; otherwise it says what to install and fails.
#   system-deps.sh          everything the tests need
#   system-deps.sh --run    only what running the system needs (redis-server): `make demo`
set -euo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${1:-}" != "--run" ]; then
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v chromium >/dev/null || missing+=(chromium)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged services; the project runs its own servers on free ports.
for svc in prometheus redis-server; do
  (command -v systemctl >/dev/null && systemctl stop "$svc" 2>/dev/null) || true
done
