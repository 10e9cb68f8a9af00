#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: etcd (cluster tests), iptables (network partitions
# in the failover tests and benchmark), Chromium (the status page test), prometheus (a cluster
# scraped by a real Prometheus), Fashion-MNIST (benchmarks) and clang
# (the libFuzzer targets of scripts/fuzz-native.sh; Debian's clang brings libFuzzer).
# Installs what is missing when run as root; otherwise says what to install.
set -euo pipefail
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
[ -x /usr/sbin/iptables ] || need+=(iptables)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v clang++ >/dev/null 2>&1 || need+=(clang)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need[*]} =="
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
