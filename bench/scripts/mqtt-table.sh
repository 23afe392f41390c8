#!/usr/bin/env bash
# Produces the MQTT rows of docs/benchmarks.md: mosquitto (apt) vs one ironhub node vs three
# ironhub nodes, all on loopback of this machine. Every row is one ironhub-bench command, printed
# before it runs; results (JSON) go to $OUT. Each run is bounded (10 s of traffic, at most 20,000
# connections).
#
#   bench/scripts/mqtt-table.sh [ROWS...]
#   rows: q0 q0flood q1 q1rates q1max conn conn-split three-q0 three-q1 three-conn transports
#
# QoS 0 is measured at offered rates in steps (Q0_RATES), the same for both brokers: unthrottled
# publishers flood a QoS 0 broker (it may drop, and a queue that only grows says nothing about
# how fast it serves), so the table gives each broker's latency and loss at each rate.
#
# Environment: BIN (release dir with ironhub and ironhub-bench, default $CARGO_TARGET_DIR/release
# or /var/cache/ironhub/target/release), BENCH (ironhub-bench binary, default $BIN/ironhub-bench),
# OUT (default ./bench-out). Waits (up to 20 min) for a quiet machine: no rustc and load < 1.
set -euo pipefail

BIN=${BIN:-${CARGO_TARGET_DIR:-/var/cache/ironhub/target}/release}
BENCH=${BENCH:-$BIN/ironhub-bench}
IRONHUB=${IRONHUB:-$BIN/ironhub}
OUT=${OUT:-./bench-out}
ROWS=${*:-q0 q1 q1rates q1max conn conn-split three-q0 three-q1 three-conn transports}
Q0_RATES=${Q0_RATES:-40000 80000 120000 160000 200000 240000}
Q1_RATES=${Q1_RATES:-10000 20000}
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
# Run a copy, so a rebuild of the target dir during the runs cannot change the binary under test.
cp "$IRONHUB" "$WORK/ironhub"
echo "ironhub binary: $IRONHUB, built $(date -u -r "$IRONHUB" '+%F %T UTC'); git HEAD $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
IRONHUB=$WORK/ironhub

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

quiet_machine() {
  local waited=0
  while pgrep -x rustc >/dev/null || awk '{exit !($1 >= 1.0)}' /proc/loadavg; do
    if [ "$waited" -ge 1200 ]; then echo "machine still busy after 20 min: $(cat /proc/loadavg)"; break; fi
    echo "waiting for a quiet machine (rustc running or load >= 1: $(cut -d' ' -f1-3 /proc/loadavg))"
    sleep 30; waited=$((waited + 30))
  done
  echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
}

wait_port() { # port
  for _ in $(seq 1 600); do
    if (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1"; exit 1
}

wait_healthy() { # api port
  for _ in $(seq 1 600); do
    if curl -sf "http://127.0.0.1:$1/healthz" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "ironhub on api port $1 not healthy"; exit 1
}

start_mosquitto() {
  printf 'listener 18851 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' >"$WORK/mosquitto.conf"
  mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
  MOSQ=$!; PIDS+=("$MOSQ")
  wait_port 18851
}

start_single() {
  rm -rf "$WORK/single"
  "$IRONHUB" serve --node-id 1 --data-dir "$WORK/single" --mqtt 127.0.0.1:18861 --api 127.0.0.1:18860 \
    --cluster 127.0.0.1:17060 --ws off --coap off --admin-token bench >"$WORK/single.log" 2>&1 &
  ONE=$!; PIDS+=("$ONE")
  wait_healthy 18860
}

# One node with every listener: TLS 18862, WebSocket 18863, secure WebSocket 18864, QUIC 18865 (UDP),
# with a throw-away self-signed certificate (not a CA: rustls refuses a CA certificate as a server's).
start_single_tls() {
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 1 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
  rm -rf "$WORK/tls"
  "$IRONHUB" serve --node-id 1 --data-dir "$WORK/tls" --mqtt 127.0.0.1:18861 --api 127.0.0.1:18860 \
    --cluster 127.0.0.1:17060 --coap off --admin-token bench --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" \
    --mqtts 127.0.0.1:18862 --ws 127.0.0.1:18863 --wss 127.0.0.1:18864 --quic 127.0.0.1:18865 \
    >"$WORK/tls.log" 2>&1 &
  ONE=$!; PIDS+=("$ONE")
  wait_healthy 18860
}

start_three() {
  local peers="1=127.0.0.1:17071,2=127.0.0.1:17072,3=127.0.0.1:17073"
  THREE=()
  for i in 1 2 3; do
    rm -rf "$WORK/three-$i"
    "$IRONHUB" serve --node-id $i --data-dir "$WORK/three-$i" --peers "$peers" --cluster-secret bench-secret \
      --api 127.0.0.1:1888$i --mqtt 127.0.0.1:1887$i --ws off --coap off --admin-token bench \
      >"$WORK/three-$i.log" 2>&1 &
    THREE+=($!); PIDS+=($!)
  done
  for i in 1 2 3; do wait_healthy 1888$i; done
  # every partition led before traffic
  for _ in $(seq 1 300); do
    if curl -sf -H 'Authorization: Bearer bench' http://127.0.0.1:18881/api/v1/cluster |
      python3 -c 'import json,sys; g=json.load(sys.stdin).get("groups",[]); sys.exit(0 if g and all(x.get("leader") for x in g) else 1)' 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "three-node cluster: not every group has a leader"; exit 1
}

stop() { # pids...
  for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

# Memory per connection is measured on freshly started brokers (a broker that already carried
# traffic reuses freed memory, which hides part of what new connections take).
fresh() {
  if [ -n "${MOSQ:-}" ]; then stop "$MOSQ"; MOSQ=; fi
  if [ -n "${ONE:-}" ]; then stop "$ONE"; ONE=; fi
  if [ -n "${THREE:-}" ]; then stop "${THREE[@]}"; THREE=; fi
}

run() { # name, bench args...
  local name=$1; shift
  quiet_machine
  echo "+ ironhub-bench $*"
  "$BENCH" "$@" --quiet --out "$OUT/$name.json"
}

for row in $ROWS; do
  case $row in conn|conn-split|three-conn|transports) fresh ;; esac
  case $row in
    q0|q0flood|q1|q1rates|q1max|conn)
      [ -n "${MOSQ:-}" ] || start_mosquitto
      [ -n "${ONE:-}" ] || start_single ;;
  esac
  case $row in
    q0) for r in $Q0_RATES; do
          run "q0-$r" compare --a 127.0.0.1:18851 --b 127.0.0.1:18861 p2p --pairs 50 --duration 10 --rate-total "$r" \
            --qos 0 --broker-pid "$MOSQ" --broker-pid "$ONE"
        done ;;
    q0flood) run q0flood compare --a 127.0.0.1:18851 --b 127.0.0.1:18861 p2p --pairs 50 --duration 10 --rate 0 --qos 0 \
          --broker-pid "$MOSQ" --broker-pid "$ONE" ;;
    q1rates) for r in $Q1_RATES; do
          run "q1-$r" compare --a 127.0.0.1:18851 --b 127.0.0.1:18861 p2p --pairs 50 --duration 10 --rate-total "$r" \
            --qos 1 --broker-pid "$MOSQ" --broker-pid "$ONE"
        done ;;
    q1) run q1 compare --a 127.0.0.1:18851 --b 127.0.0.1:18861 p2p --pairs 50 --duration 10 --rate-total 3000 --qos 1 \
          --broker-pid "$MOSQ" --broker-pid "$ONE" ;;
    q1max) run q1max compare --a 127.0.0.1:18851 --b 127.0.0.1:18861 p2p --pairs 50 --duration 10 --rate 0 --qos 1 \
          --broker-pid "$MOSQ" --broker-pid "$ONE" ;;
    conn)
      run conn-mosquitto conn --port 18851 --clients 10000 --connect-rate 2000 --duration 10 --broker-pid "$MOSQ"
      run conn-ironhub conn --port 18861 --clients 10000 --connect-rate 2000 --duration 10 --broker-pid "$ONE" ;;
    conn-split)
      [ -n "${ONE:-}" ] || start_single
      run conn-split conn --port 18861 --clients 16000 --connect-rate 2000 --duration 10 \
        --ifaddr 127.0.0.1,127.0.0.2 --broker-pid "$ONE" ;;
    transports)
      start_single_tls
      for t in tcp:18861 tls:18862 ws:18863 wss:18864 quic:18865; do
        run "transport-${t%%:*}" p2p --transport "${t%%:*}" --port "${t##*:}" --ca "$WORK/cert.pem" \
          --pairs 50 --duration 10 --rate-total 60000 --qos 0 --broker-pid "$ONE"
      done ;;
    three-*)
      if [ -n "${ONE:-}" ]; then stop "$ONE"; ONE=; fi
      [ -n "${THREE:-}" ] || start_three
      case $row in
        three-q0) run three-q0 p2p --port 18871 --pairs 50 --duration 10 --rate-total 120000 --qos 0 \
              --broker-pid "${THREE[0]}" --broker-pid "${THREE[1]}" --broker-pid "${THREE[2]}" ;;
        three-q1) run three-q1 p2p --port 18871 --pairs 50 --duration 10 --rate-total 3000 --qos 1 \
              --broker-pid "${THREE[0]}" --broker-pid "${THREE[1]}" --broker-pid "${THREE[2]}" ;;
        three-conn) run three-conn conn --port 18871 --clients 10000 --connect-rate 2000 --duration 10 \
              --broker-pid "${THREE[0]}" --broker-pid "${THREE[1]}" --broker-pid "${THREE[2]}" ;;
      esac ;;
    *) echo "unknown row $row"; exit 2 ;;
  esac
done
