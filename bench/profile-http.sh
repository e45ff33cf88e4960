#!/usr/bin/env bash
# Instructions per request on the gateway's HTTP path, from valgrind's callgrind: stable on a
# noisy machine where wall-clock profiles are not. Loopback only.
#
# Usage: bench/profile-http.sh [seconds]   (default 5 s of measured load, after a warm-up)
# Environment: MODE=http (requests by Host over kept-alive connections) or tcp-newconn (every
#              request a new connection through a TCP route: the per-connection cost of the
#              stream path, which TLS passthrough shares; nginx's comparison is its stream
#              proxy), CONNS=8 (wrk connections), SLUICE_BIN (default: a release build with line
#              tables in target/prof), OUT (default target/prof/callgrind.out), NGINX=1 also
#              measures nginx proxying the same requests (`--trace-children`), for the ratio.
#
# Starts an nginx upstream (a fixed 100-byte body) on 127.0.0.1:18080 and sluice's gateway on
# 127.0.0.1:18101 (one HTTP route by Host, as bench/proxy-compare.sh's http mode) under
# callgrind with instrumentation off; warms up; turns instrumentation on for the measured run;
# prints Ir (instructions) per request and the top functions (inclusive and self).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
conns=${CONNS:-8}
mode=${MODE:-http}
case $mode in
  http) wrk_extra=() ;;
  tcp-newconn) wrk_extra=(-H 'Connection: close') ;;
  *) echo "MODE is http or tcp-newconn" >&2; exit 1 ;;
esac
for t in valgrind callgrind_control callgrind_annotate nginx wrk; do
  command -v "$t" >/dev/null || { echo "needs $t (apt-get install valgrind nginx-light wrk)" >&2; exit 1; }
done
if [ "${NGINX:-0}" = 1 ] && [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  echo "NGINX=1 needs nginx's stream module (apt-get install libnginx-mod-stream)" >&2; exit 1
fi
if [ -z "${SLUICE_BIN:-}" ]; then
  echo "building sluice (release, line tables) into target/prof…" >&2
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only nice -n 5 \
    cargo build --release -q -p sluice --target-dir target/prof
  SLUICE_BIN=$PWD/target/prof/release/sluice
fi
out=${OUT:-$PWD/target/prof/callgrind.out}
mkdir -p "$(dirname "$out")"
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
for p in 18080 18100 18101 18102 18111 18112; do
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port 127.0.0.1:$p is in use" >&2; exit 1
  fi
done

mkdir -p "$dir/up/tmp" "$dir/sluice"
cat > "$dir/up/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
pid $dir/up/nginx.pid;
error_log $dir/up/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/up/tmp;
  proxy_temp_path $dir/up/tmp;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:18080;
    location / { return 200 "$(printf 'x%.0s' $(seq 1 99))\n"; }
  }
}
EOF
nginx -c "$dir/up/nginx.conf" -p "$dir/up" -e "$dir/up/error.log" & pids+=($!)

cat > "$dir/sluice/bench.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 18101, name: http-plain, protocol: HTTP}
    hosts: [plain.bench.test]
  - port: {number: 18111, name: tcp-plain, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: istio-system}
spec:
  hosts: [plain.bench.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 18080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain, namespace: istio-system}
spec:
  hosts: [plain.bench.test]
  gateways: [egress]
  http:
  - route: [{destination: {host: plain.bench.test, port: {number: 18080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain-tcp, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [egress]
  tcp:
  - match: [{port: 18111}]
    route: [{destination: {host: plain.bench.test, port: {number: 18080}}}]
EOF
SLUICE_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$SLUICE_BIN" gateway -c "$dir/sluice" --bind 127.0.0.1 --admin 127.0.0.1:18100 \
  2>"$dir/valgrind.log" & vg=$!
pids+=($vg)

if [ "${NGINX:-0}" = 1 ]; then
  mkdir -p "$dir/px/tmp"
  cat > "$dir/px/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process off;
worker_processes 1;
pid $dir/px/nginx.pid;
error_log $dir/px/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/px/tmp;
  proxy_temp_path $dir/px/tmp;
  upstream up { server 127.0.0.1:18080; keepalive 64; }
  server {
    listen 127.0.0.1:18102;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
stream {
  server { listen 127.0.0.1:18112; proxy_pass 127.0.0.1:18080; }
}
EOF
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out.nginx" \
    nginx -c "$dir/px/nginx.conf" -p "$dir/px" -e "$dir/px/error.log" 2>"$dir/valgrind-nginx.log" &
  ng=$!
  pids+=($ng)
fi

deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null -H 'Host: plain.bench.test' http://127.0.0.1:18101/ 2>/dev/null; do
  [ $SECONDS -lt $deadline ] || { echo "sluice did not answer; valgrind log:" >&2; cat "$dir/valgrind.log" >&2; exit 1; }
  sleep 0.5
done

# measure PID PORT LABEL: warm up, then count instructions over a measured run.
measure() {
  local pid=$1 port=$2 label=$3 file=$4
  wrk -t1 -c"$conns" -d2s -H 'Host: plain.bench.test' "${wrk_extra[@]}" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  local reqs
  reqs=$(wrk -t1 -c"$conns" -d"${secs}s" -H 'Host: plain.bench.test' "${wrk_extra[@]}" "http://127.0.0.1:$port/" |
    awk '/requests in/ {print $1}')
  callgrind_control -i off "$pid" >/dev/null
  callgrind_control -d "$pid" >/dev/null
  local total
  # The newest dump of this process (callgrind numbers them).
  local dump
  dump=$(ls -t "$file"* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "$label: $reqs requests, $total Ir, $((total / reqs)) Ir/request  ($dump)"
  LAST_DUMP=$dump
}
port_sluice=18101 port_nginx=18102
[ "$mode" = tcp-newconn ] && port_sluice=18111 port_nginx=18112
measure "$vg" $port_sluice sluice "$out"
sluice_dump=$LAST_DUMP
if [ "${NGINX:-0}" = 1 ]; then
  until curl -fsS -o /dev/null -H 'Host: plain.bench.test' http://127.0.0.1:$port_nginx/ 2>/dev/null; do sleep 0.5; done
  measure "$ng" $port_nginx nginx "$out.nginx"
fi
echo
echo "== sluice, inclusive (top 40)"
callgrind_annotate --inclusive=yes "$sluice_dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -45
echo
echo "== sluice, self (top 40)"
callgrind_annotate "$sluice_dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -45
