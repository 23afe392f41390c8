#!/usr/bin/env bash
# Brings the compose cluster up under a throw-away project name, waits until every raft group has a
# leader and the leaders are spread over the three nodes, kills one container, checks that the other
# two lead every group again, starts it again, checks it catches up, and removes everything it made
# (containers, network, volumes). Needs docker-compose (or `docker compose`), curl and python3.
#
#   deploy/compose/smoke-test.sh            # project "ironhub-test", kills ironhub2
#   KILL=ironhub1 PROJECT=x deploy/compose/smoke-test.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
PROJECT="${PROJECT:-ironhub-test}"
KILL="${KILL:-ironhub2}"
export IRONHUB_ADMIN_TOKEN="${IRONHUB_ADMIN_TOKEN:-smoke-test-token}"
export IRONHUB_CLUSTER_SECRET="${IRONHUB_CLUSTER_SECRET:-smoke-test-secret}"
if command -v docker-compose >/dev/null; then DC=(docker-compose); else DC=(docker compose); fi
DC+=(-p "$PROJECT" -f docker-compose.yml)

say() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
cleanup() {
  say "docker-compose down -v"
  "${DC[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

port_of() { echo $((18080 + ${1#ironhub})); }

# Prints "led=<groups with a leader>/<groups> per-node=<leader:count,...>" as node on port $1 sees it.
leaders() {
  curl -sf -m 3 -H "Authorization: Bearer $IRONHUB_ADMIN_TOKEN" "http://127.0.0.1:$1/api/v1/cluster" |
    python3 -c '
import json, sys, collections
d = json.load(sys.stdin)
g = d["groups"]
c = collections.Counter(x["leader"] for x in g if x["leader"] is not None)
print(f"led={sum(c.values())}/{len(g)} per-node=" + ",".join(f"{k}:{v}" for k, v in sorted(c.items())))'
}

# wait_until PORT WANT_NODES TIMEOUT: every group led, leaders on exactly WANT_NODES distinct nodes.
wait_until() {
  local port=$1 want=$2 deadline=$((SECONDS + $3)) out=""
  while ((SECONDS < deadline)); do
    out="$(leaders "$port" 2>/dev/null || true)"
    if [[ "$out" =~ ^led=([0-9]+)/([0-9]+)\ per-node=(.*)$ ]] && [[ ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]] &&
       [[ ${BASH_REMATCH[2]} -gt 0 ]] && [[ $(tr ',' '\n' <<<"${BASH_REMATCH[3]}" | wc -l) == "$want" ]]; then
      say "127.0.0.1:$port: $out"
      return 0
    fi
    sleep 0.5
  done
  say "FAIL: 127.0.0.1:$port did not reach 'every group led, leaders on $want nodes' in $3 s; last: ${out:-no answer}"
  return 1
}

say "docker-compose -p $PROJECT up -d"
"${DC[@]}" up -d
wait_until 18181 3 90
for n in ironhub1 ironhub2 ironhub3; do leaders "$(port_of "$n")" | sed "s/^/  $n sees: /"; done

cid="$("${DC[@]}" ps -q "$KILL")"
say "docker kill $KILL ($cid)"
t0=$SECONDS
docker kill "$cid" >/dev/null
for n in ironhub1 ironhub2 ironhub3; do
  [[ $n == "$KILL" ]] && continue
  wait_until "$(port_of "$n")" 2 30
done
say "the two survivors lead every group again (checked within $((SECONDS - t0)) s of the kill)"

say "docker start $KILL"
docker start "$cid" >/dev/null
wait_until "$(port_of "$KILL")" 3 90 || wait_until "$(port_of "$KILL")" 2 5
say "restarted $KILL answers with every group led"
"${DC[@]}" ps
say "PASS"
