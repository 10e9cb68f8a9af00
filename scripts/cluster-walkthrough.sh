#!/usr/bin/env bash
# The steps of README.md's "Run a cluster" on loopback: a 3-member etcd cluster, three quiver nodes
# against all three etcd endpoints, a collection with three replicas, a write through each node, a
# read of every write through each node, `quiver admin nodes` and `quiver admin health`. Every
# address is 127.0.0.1 on a free port; everything lives in one temp dir. Each step prints
# "step: ..." when it starts and "ok: ..." when it checked out; the first step that fails prints
# "FAILED: ..." with the logs' tails and exits 1. On exit, every process the script started is
# stopped by its pid and the temp dir is removed.
#
# usage: bash scripts/cluster-walkthrough.sh     (etcd from $ETCD, default /usr/bin/etcd; quiver
# from bin/quiver.js over the compiled dist/, as `npm ci` or `npx tsc -p tsconfig.json` leave it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ETCD=${ETCD:-/usr/bin/etcd}
QUIVER=(node "$ROOT/bin/quiver.js")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/quiver-walkthrough-XXXXXX")
ETCD_PIDS=()
NODE_PIDS=()

# stop PID...: SIGTERM, then SIGKILL whatever still runs 20 s later; waits for each.
stop() {
  local pid alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 200); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
# The nodes first (each drains and revokes its etcd lease on SIGTERM), then etcd.
stop_all() {
  stop "${NODE_PIDS[@]}"
  NODE_PIDS=()
  stop "${ETCD_PIDS[@]}"
  ETCD_PIDS=()
}
cleanup() {
  stop_all
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' TERM INT

step() { echo "step: $*"; }
ok() { echo "ok: $*"; }
fail() {
  echo "FAILED: $*"
  for log in "$WORK"/*.log; do
    [ -e "$log" ] || continue
    echo "--- tail of $(basename "$log")"
    tail -n 10 "$log"
  done
  exit 1
}

# until SECONDS CMD...: runs CMD every 100 ms until it succeeds; fails once SECONDS have passed.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# post URL JSON: the answer's body on stdout; fails unless the answer is 2xx.
post() { curl -sS --fail-with-body -H 'content-type: application/json' -d "$2" "$1"; }

[ -x "$ETCD" ] || fail "no etcd at $ETCD (Debian: apt-get install etcd-server)"

# Free ports: the kernel picks them (port 0) for six listeners held open at once, then frees them.
read -r -a PORTS <<<"$(node -e '
const net = require("net");
const servers = Array.from({ length: 6 }, () => net.createServer());
Promise.all(servers.map((s) => new Promise((r) => s.listen(0, "127.0.0.1", r)))).then(() => {
  console.log(servers.map((s) => s.address().port).join(" "));
  servers.forEach((s) => s.close());
});')"
[ "${#PORTS[@]}" = 6 ] || fail "could not pick 6 free ports"

step "start a 3-member etcd cluster"
TOKEN=$(basename "$WORK") # unique: a member of another cluster is refused
INITIAL=""
ENDPOINTS=""
for i in 1 2 3; do
  INITIAL+="${INITIAL:+,}m$i=http://127.0.0.1:${PORTS[$((2 * i - 1))]}"
  ENDPOINTS+="${ENDPOINTS:+,}http://127.0.0.1:${PORTS[$((2 * i - 2))]}"
done
for i in 1 2 3; do
  client="http://127.0.0.1:${PORTS[$((2 * i - 2))]}"
  peer="http://127.0.0.1:${PORTS[$((2 * i - 1))]}"
  "$ETCD" --name "m$i" --data-dir "$WORK/etcd-m$i" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$INITIAL" --initial-cluster-state new --initial-cluster-token "$TOKEN" \
    >"$WORK/etcd-m$i.log" 2>&1 &
  ETCD_PIDS+=($!)
done
# Each member answers /health once the cluster has a leader.
for ep in ${ENDPOINTS//,/ }; do
  until_ok 30 sh -c "curl -sSf '$ep/health' | grep -q '\"health\":\"true\"'" || fail "etcd member $ep is not healthy after 30 s"
done
members=$(post "${ENDPOINTS%%,*}/v3/cluster/member/list" '{}') || fail "etcd member list: $members"
[ "$(grep -o '"name":"m[123]"' <<<"$members" | sort -u | wc -l)" = 3 ] || fail "etcd does not list 3 members: $members"
ok "etcd members m1 m2 m3 healthy at $ENDPOINTS"

step "start 3 quiver nodes"
declare -A HTTP
for i in 1 2 3; do
  mkdir -p "$WORK/n$i"
  "${QUIVER[@]}" serve --etcd "$ENDPOINTS" --node-id "n$i" --data "$WORK/n$i" \
    --grpc 127.0.0.1:0 --http 127.0.0.1:0 --replication 127.0.0.1:0 \
    --cluster walkthrough --drain-timeout-ms 3000 >"$WORK/n$i.log" 2>&1 &
  NODE_PIDS+=($!)
done
for i in 1 2 3; do
  until_ok 60 grep -q '^quiver: ready' "$WORK/n$i.log" || fail "node n$i is not ready after 60 s"
  HTTP[n$i]=$(sed -n 's/^quiver: http listening on \(http:\/\/[^ ]*\).*/\1/p' "$WORK/n$i.log" | head -n 1)
  [ -n "${HTTP[n$i]}" ] || fail "node n$i printed no http address"
  ok "node n$i ready, http ${HTTP[n$i]}"
done

step "quiver admin nodes"
nodes=$("${QUIVER[@]}" admin nodes --server "${HTTP[n1]}") || fail "quiver admin nodes exited $?"
echo "$nodes"
[ "$(grep -c '^n[123]	' <<<"$nodes")" = 3 ] || fail "quiver admin nodes does not list n1, n2 and n3"
ok "3 nodes live"

step "create collection walk (replicationFactor 3)"
post "${HTTP[n1]}/v1/collections" '{"name":"walk","dim":4,"index":{"type":"flat"},"replicationFactor":3}' >"$WORK/create.json" ||
  fail "create: $(cat "$WORK/create.json")"
grep -q '"replicationFactor":3' "$WORK/create.json" || fail "create answered $(cat "$WORK/create.json")"
ok "collection walk created"

step "write through each node"
for i in 1 2 3; do
  body="{\"points\":[{\"id\":\"p$i\",\"vector\":[$i,0,0,0],\"payload\":{\"via\":\"n$i\"}}]}"
  answer=$(post "${HTTP[n$i]}/v1/collections/walk/upsert" "$body") || fail "write through n$i: $answer"
  grep -q '"upserted":1' <<<"$answer" || fail "write through n$i answered $answer"
  ok "wrote p$i through n$i"
done

step "read every write through each node"
for i in 1 2 3; do
  answer=$(post "${HTTP[n$i]}/v1/collections/walk/get" '{"ids":["p1","p2","p3"],"withPayload":true}') || fail "read through n$i: $answer"
  for j in 1 2 3; do
    grep -q "\"id\":\"p$j\",\"payload\":{\"via\":\"n$j\"}" <<<"$answer" || fail "read through n$i lacks p$j: $answer"
  done
  count=$(curl -sSf "${HTTP[n$i]}/v1/collections/walk/count") || fail "count through n$i"
  [ "$count" = '{"count":3}' ] || fail "count through n$i answered $count"
  ok "n$i reads p1 p2 p3 (count 3)"
done

step "quiver admin health"
# Every replica reports to the shard maps; they may take a moment after the writes.
until_ok 30 "${QUIVER[@]}" admin health --server "${HTTP[n2]}" ||
  fail "quiver admin health: $("${QUIVER[@]}" admin health --server "${HTTP[n2]}" 2>&1)"
"${QUIVER[@]}" admin health --server "${HTTP[n2]}" || fail "quiver admin health exited $?"
ok "cluster healthy"

step "stop every process"
stop_all
for i in 1 2 3; do
  grep -q 'bye' "$WORK/n$i.log" || fail "node n$i did not shut down cleanly"
done
ok "nodes and etcd members stopped"
echo "walkthrough passed"
