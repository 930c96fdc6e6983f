#!/bin/sh
# Installs the Debian packages anvil needs to build and test (idempotent: does nothing when all are present).
set -e
PKGS="build-essential libcjson-dev libyaml-dev libedit-dev libopenblas-openmp-dev libmicrohttpd-dev pkg-config gnuplot-nox curl"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "setup: installing$missing"
if [ "$(id -u)" != 0 ]; then
  echo "setup: need root to apt-get install$missing (run as root or install them yourself)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $missing >/dev/null
