#!/usr/bin/env bash
# Data-plane throughput per core: sluice's gateway against nginx, HAProxy and squid, side by
# side in one run, with the direct connection as the baseline. Loopback only.
#
# Usage: bench/proxy-compare.sh [seconds]      (default 10 s per measurement, after a 2 s warm-up)
# Environment: MODES="http tls-origination passthrough passthrough-newconn" (that order, all by
#              default), CONNS=50 (wrk connections), KEEP=1 (keep the temp dir with the configs).
#
# Installs what it needs on Debian (nginx-light, libnginx-mod-stream, haproxy, squid, wrk) and
# builds sluice in release mode. Every proxy runs pinned to core 1 (`taskset -c 1`) with one
# worker; wrk (1 thread) and the upstream (an nginx with one worker answering a fixed 100-byte
# body) share core 0. A proxy's CPU time is the utime+stime delta of its processes
# (/proc/PID/stat, the process and its children) over the measured run, divided by the
# requests wrk completed: CPU µs per request, which does not depend on who the bottleneck was.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${CONNS:-50}
modes=${MODES:-"http tls-origination passthrough passthrough-newconn"}
warmup=2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PROXY_CORE=1
LOAD_CORE=0

# --- tools -----------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null || need+=(haproxy)
command -v squid >/dev/null || need+=(squid)
command -v wrk >/dev/null || need+=(wrk)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Packaged services would start on install (and take port 80): a policy-rc.d keeps them down.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
  fi
  apt-get install -y -qq "${need[@]}" >/dev/null
  [ $own_policy = 0 ] || rm -f /usr/sbin/policy-rc.d
fi
[ "$(nproc)" -ge 2 ] || { echo "needs at least 2 cores (proxy on core 1, load on core 0)" >&2; exit 1; }

echo "building sluice (release)…" >&2
cargo build --release -q -p sluice
sluice_bin=$PWD/target/release/sluice

# --- processes: every one started here is stopped by PID -------------------------------------
dir=$(mktemp -d /tmp/sluice-proxy-compare.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then echo "configs kept in $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports (all on 127.0.0.1). Upstream: 18080 HTTP, 18443 HTTPS. Per proxy, 181xx HTTP,
# 182xx HTTP → HTTPS (TLS origination), 183xx TLS passthrough; xx: 01 sluice, 02 nginx,
# 03 HAProxy, 04 squid. sluice's admin API: 18100.
all_ports="18080 18443 18100 18101 18102 18103 18104 18201 18202 18203 18301 18302 18303"
for p in $all_ports; do
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port 127.0.0.1:$p is already in use; stop what holds it first" >&2; exit 1
  fi
done

# --- test PKI: a CA and an upstream certificate (ECDSA P-256) ---------------------------------
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 2 -subj "/CN=sluice bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$dir/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$dir/upstream.key" 2>/dev/null
openssl req -new -key "$dir/upstream.key" -subj "/CN=tls.bench.test" -out "$dir/upstream.csr" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:tls.bench.test,DNS:pass.bench.test" > "$dir/ext.cnf"
openssl x509 -req -in "$dir/upstream.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 2 -sha256 -extfile "$dir/ext.cnf" -out "$dir/upstream.pem" 2>/dev/null
chmod 644 "$dir"/*.pem "$dir"/*.key

# --- the upstream: nginx, 1 worker, core 0, a fixed 100-byte body on HTTP and HTTPS -----------
body=$(printf 'x%.0s' $(seq 99))
mkdir -p "$dir/upstream" "$dir/nginx"
cat > "$dir/upstream/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/upstream/nginx.pid;
error_log $dir/upstream/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/upstream/tmp;
  proxy_temp_path $dir/upstream/tmp;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  default_type text/plain;
  ssl_session_cache shared:up:10m;
  server {
    listen 127.0.0.1:18080;
    listen 127.0.0.1:18443 ssl;
    ssl_certificate $dir/upstream.pem;
    ssl_certificate_key $dir/upstream.key;
    location / { return 200 "$body\n"; }
  }
}
EOF

# --- nginx as the proxy ------------------------------------------------------------------------
cat > "$dir/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/nginx/tmp;
  proxy_temp_path $dir/nginx/tmp;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream plain_up { server 127.0.0.1:18080; keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s; }
  upstream tls_up   { server 127.0.0.1:18443; keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:18102;
    location / {
      proxy_pass http://plain_up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
  server {
    listen 127.0.0.1:18202;
    location / {
      proxy_pass https://tls_up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_ssl_server_name on;
      proxy_ssl_name tls.bench.test;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $dir/ca.pem;
      proxy_ssl_session_reuse on;
    }
  }
}
stream {
  map \$ssl_preread_server_name \$pass_backend {
    pass.bench.test 127.0.0.1:18443;
    default 127.0.0.1:9;
  }
  server {
    listen 127.0.0.1:18302;
    ssl_preread on;
    proxy_pass \$pass_backend;
  }
}
EOF

# --- HAProxy -------------------------------------------------------------------------------------
cat > "$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout tunnel 60s
  timeout http-keep-alive 300s
frontend plain_fe
  bind 127.0.0.1:18103
  default_backend plain_be
backend plain_be
  http-reuse always
  server up 127.0.0.1:18080
frontend tls_fe
  bind 127.0.0.1:18203
  default_backend tls_be
backend tls_be
  http-reuse always
  server up 127.0.0.1:18443 ssl verify required ca-file $dir/ca.pem sni str(tls.bench.test) verifyhost tls.bench.test
frontend pass_fe
  mode tcp
  bind 127.0.0.1:18303
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend pass_be if { req.ssl_sni -i pass.bench.test }
backend pass_be
  mode tcp
  server up 127.0.0.1:18443
EOF

# --- squid (reverse proxy / accelerator mode, no caching) ------------------------------------------
mkdir -p "$dir/squid"
chown proxy "$dir/squid" 2>/dev/null || chmod 777 "$dir/squid"
cat > "$dir/squid.conf" <<EOF
workers 1
http_port 127.0.0.1:18104 accel defaultsite=plain.bench.test
cache_peer 127.0.0.1 parent 18080 0 no-query originserver name=up
cache_peer_access up allow all
http_access allow all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log $dir/squid/cache.log
pid_filename $dir/squid/squid.pid
coredump_dir $dir/squid
shutdown_lifetime 0 seconds
EOF

# --- sluice: Istio YAML ----------------------------------------------------------------------------
mkdir -p "$dir/sluice"
cat > "$dir/sluice/bench.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 18101, name: http-plain, protocol: HTTP}
    hosts: [plain.bench.test]
  - port: {number: 18201, name: http-tls-origination, protocol: HTTP}
    hosts: [tls.bench.test]
  - port: {number: 18301, name: tls-passthrough, protocol: TLS}
    hosts: [pass.bench.test]
    tls: {mode: PASSTHROUGH}
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
kind: ServiceEntry
metadata: {name: tls, namespace: istio-system}
spec:
  hosts: [tls.bench.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 18443, name: http-tls, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pass, namespace: istio-system}
spec:
  hosts: [pass.bench.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 18443, name: tls, protocol: TLS}]
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
metadata: {name: tls, namespace: istio-system}
spec:
  hosts: [tls.bench.test]
  gateways: [egress]
  http:
  - route: [{destination: {host: tls.bench.test, port: {number: 18443}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tls, namespace: istio-system}
spec:
  host: tls.bench.test
  trafficPolicy:
    tls: {mode: SIMPLE, sni: tls.bench.test, caCertificates: $dir/ca.pem}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: pass, namespace: istio-system}
spec:
  hosts: [pass.bench.test]
  gateways: [egress]
  tls:
  - match: [{port: 18301, sniHosts: [pass.bench.test]}]
    route: [{destination: {host: pass.bench.test, port: {number: 18443}}}]
EOF
"$sluice_bin" analyze "$dir/sluice" >&2 || { echo "sluice analyze rejected the bench config" >&2; exit 1; }

# --- wrk: one thread on core 0; names resolve to 127.0.0.1; results as one parsable line -------
cat > "$dir/bench.lua" <<'EOF'
function wrk.resolve(host, service)
  wrk.addrs = wrk.lookup("127.0.0.1", service)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d sock_errors=%d status_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
EOF

start() { # start NAME CORE CMD...: runs CMD pinned to CORE, in the background; echoes nothing
  local name=$1 core=$2; shift 2
  taskset -c "$core" "$@" >"$dir/$name.out" 2>&1 &
  pids+=("$!")
  eval "pid_$name=$!"
}
wait_port() { # wait_port PORT NAME
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not listen on 127.0.0.1:$1; its output:" >&2; cat "$dir/$2.out" >&2; exit 1
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
start upstream $LOAD_CORE nginx -c "$dir/upstream/nginx.conf" -p "$dir/upstream" -e "$dir/upstream/error.log"
wait_port 18080 upstream; wait_port 18443 upstream
start nginx $PROXY_CORE nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" -e "$dir/nginx/error.log"
wait_port 18102 nginx
start haproxy $PROXY_CORE haproxy -db -f "$dir/haproxy.cfg"
wait_port 18103 haproxy
start squid $PROXY_CORE squid -N -f "$dir/squid.conf"
wait_port 18104 squid
start sluice $PROXY_CORE env SLUICE_LOG=warn "$sluice_bin" gateway -c "$dir/sluice" --bind 127.0.0.1 --admin 127.0.0.1:18100
for _ in $(seq 100); do curl -fs http://127.0.0.1:18100/ready >/dev/null 2>&1 && break; sleep 0.1; done
curl -fs http://127.0.0.1:18100/ready >/dev/null || { echo "sluice not ready:" >&2; cat "$dir/sluice.out" >&2; exit 1; }

cpu_ticks() { # utime+stime (clock ticks) of a process and its children
  local total=0 p t
  for p in "$1" $(ps -o pid= --ppid "$1"); do
    t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

check() { # check URL CURL-ARGS...: one request must answer 200 with the 100-byte body
  local url=$1; shift
  local got
  got=$(curl -s -o "$dir/check.body" -w '%{http_code} %{size_download}' "$@" "$url" || true)
  if [ "$got" != "200 100" ]; then
    echo "sanity check failed for $url ($*): got '$got'" >&2; return 1
  fi
}

results=$dir/results.tsv
: > "$results"
measure() { # measure MODE NAME PID URL [wrk args...]   (PID "-" for direct)
  local mode=$1 name=$2 pid=$3 url=$4; shift 4
  taskset -c $LOAD_CORE wrk -t1 -c"$conns" -d${warmup}s -s "$dir/bench.lua" "$@" "$url" >/dev/null 2>&1 || true
  local c0=0 c1=0 t0 t1 out
  [ "$pid" = - ] || c0=$(cpu_ticks "$pid")
  t0=$(date +%s%N)
  out=$(taskset -c $LOAD_CORE wrk -t1 -c"$conns" -d"${secs}s" -s "$dir/bench.lua" "$@" "$url" 2>&1 | grep '^RESULT' || true)
  t1=$(date +%s%N)
  [ "$pid" = - ] || c1=$(cpu_ticks "$pid")
  if [ -z "$out" ]; then echo "wrk failed for $mode/$name ($url)" >&2; return 0; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$name" "$pid" "$(( (c1 - c0) ))" "$(( (t1 - t0) / 1000 ))" "$out" >> "$results"
  echo "  $mode / $name: $out" >&2
}

host_hdr() { echo "Host: $1"; }
for mode in $modes; do
  echo "mode $mode:" >&2
  case $mode in
    http)
      check http://127.0.0.1:18080/ -H "$(host_hdr plain.bench.test)"
      check http://127.0.0.1:18101/ -H "$(host_hdr plain.bench.test)"
      check http://127.0.0.1:18102/ -H "$(host_hdr plain.bench.test)"
      check http://127.0.0.1:18103/ -H "$(host_hdr plain.bench.test)"
      check http://127.0.0.1:18104/ -H "$(host_hdr plain.bench.test)"
      h=(-H "$(host_hdr plain.bench.test)")
      measure http direct - http://127.0.0.1:18080/ "${h[@]}"
      measure http sluice "$pid_sluice" http://127.0.0.1:18101/ "${h[@]}"
      measure http nginx "$pid_nginx" http://127.0.0.1:18102/ "${h[@]}"
      measure http haproxy "$pid_haproxy" http://127.0.0.1:18103/ "${h[@]}"
      measure http squid "$pid_squid" http://127.0.0.1:18104/ "${h[@]}"
      ;;
    tls-origination)
      r=(--resolve tls.bench.test:18443:127.0.0.1 --cacert "$dir/ca.pem")
      check https://tls.bench.test:18443/ "${r[@]}"
      check http://127.0.0.1:18201/ -H "$(host_hdr tls.bench.test)"
      check http://127.0.0.1:18202/ -H "$(host_hdr tls.bench.test)"
      check http://127.0.0.1:18203/ -H "$(host_hdr tls.bench.test)"
      h=(-H "$(host_hdr tls.bench.test)")
      measure tls-origination "direct (https)" - https://tls.bench.test:18443/
      measure tls-origination sluice "$pid_sluice" http://127.0.0.1:18201/ "${h[@]}"
      measure tls-origination nginx "$pid_nginx" http://127.0.0.1:18202/ "${h[@]}"
      measure tls-origination haproxy "$pid_haproxy" http://127.0.0.1:18203/ "${h[@]}"
      ;;
    passthrough|passthrough-newconn)
      extra=()
      [ "$mode" = passthrough-newconn ] && extra=(-H "Connection: close")
      for p in 18443 18301 18302 18303; do
        check "https://pass.bench.test:$p/" --resolve "pass.bench.test:$p:127.0.0.1" --cacert "$dir/ca.pem"
      done
      measure "$mode" "direct (https)" - https://pass.bench.test:18443/ "${extra[@]}"
      measure "$mode" sluice "$pid_sluice" https://pass.bench.test:18301/ "${extra[@]}"
      measure "$mode" nginx "$pid_nginx" https://pass.bench.test:18302/ "${extra[@]}"
      measure "$mode" haproxy "$pid_haproxy" https://pass.bench.test:18303/ "${extra[@]}"
      ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
  esac
done

# --- the table -----------------------------------------------------------------------------------
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo
echo "sluice proxy-compare, $(date -u +%Y-%m-%d), $(nproc) cores ($cpu_model), ${secs} s per run after ${warmup} s warm-up, wrk -t1 -c$conns"
echo "load average before the run: $load_before (other work on the machine skews the numbers: run twice, keep the better)"
echo "sluice $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR==1{print $3}'), squid $(squid -v | awk 'NR==1{print $4}'), wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}')"
echo
python3 - "$results" "$hz" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]):
    mode, name, pid, ticks, wall_us, res = line.rstrip("\n").split("\t")
    kv = dict(x.split("=") for x in res.split()[1:])
    req = int(kv["requests"]); dur = int(kv["duration_us"]) / 1e6
    cpu_s = int(ticks) / int(sys.argv[2])
    rows.append(dict(mode=mode, name=name, direct=(pid == "-"), rps=req / dur,
                     cpu_us=(cpu_s * 1e6 / req if req and pid != "-" else None),
                     busy=(cpu_s / (int(wall_us) / 1e6) if pid != "-" else None),
                     p50=int(kv["p50_us"]), p99=int(kv["p99_us"]),
                     errs=int(kv["sock_errors"]) + int(kv["status_errors"])))
def lat(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us} µs"
print("| mode | proxy | req/s | CPU µs/req | proxy core busy | p50 | p99 | req/s ÷ nginx | CPU/req ÷ nginx | req/s ÷ direct | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for mode in dict.fromkeys(r["mode"] for r in rows):
    rs = [r for r in rows if r["mode"] == mode]
    ng = next((r for r in rs if r["name"] == "nginx"), None)
    di = next((r for r in rs if r["direct"]), None)
    for r in rs:
        cpu = f"{r['cpu_us']:.1f}" if r["cpu_us"] is not None else "–"
        busy = f"{r['busy'] * 100:.0f}%" if r["busy"] is not None else "–"
        rn = f"{r['rps'] / ng['rps']:.2f}" if ng else "–"
        cn = f"{r['cpu_us'] / ng['cpu_us']:.2f}" if ng and r["cpu_us"] and ng["cpu_us"] else "–"
        rd = f"{r['rps'] / di['rps']:.2f}" if di else "–"
        print(f"| {mode} | {r['name']} | {r['rps']:,.0f} | {cpu} | {busy} | {lat(r['p50'])} | {lat(r['p99'])} | {rn} | {cn} | {rd} | {r['errs']} |")
PY
cat <<EOF

Configurations (each proxy: one worker on core $PROXY_CORE; upstream and wrk on core $LOAD_CORE):
  upstream  nginx, worker_processes 1, \`return 200\` of a 100-byte body on :18080 (HTTP) and :18443 (HTTPS, ECDSA P-256 test cert)
  sluice    gateway, release build, SLUICE_LOG=warn, no meshConfig (no access log); Gateway + VirtualService +
            ServiceEntry (STATIC 127.0.0.1); TLS origination: DestinationRule SIMPLE with sni + caCertificates;
            passthrough: TLS server PASSTHROUGH + VirtualService tls sniHosts. Upstream HTTP/1.1, pooled (its default)
  nginx     worker_processes 1, access_log off; proxy_http_version 1.1, Connection "", upstream keepalive 128;
            TLS: proxy_pass https://, proxy_ssl_verify on + trusted CA, proxy_ssl_server_name, proxy_ssl_session_reuse on;
            passthrough: stream { ssl_preread on; map \$ssl_preread_server_name }
  HAProxy   nbthread 1, no logging, mode http, option http-keep-alive, http-reuse always;
            TLS: server … ssl verify required ca-file sni verifyhost; passthrough: mode tcp, req.ssl_sni
  squid     workers 1 (-N), accel mode with an originserver cache_peer, cache deny all, access_log none,
            server_persistent_connections on (default)
Modes: http = small GET over client keep-alive, proxy keeps upstream connections alive.
  tls-origination = HTTP in, HTTPS out (verified), both sides kept alive: TLS record cost, not handshakes.
  passthrough = TLS forwarded by SNI over kept-alive connections: per-request byte-forwarding cost only
    (the SNI peek happens once per connection). direct = wrk straight to the HTTPS upstream.
  passthrough-newconn = the same with "Connection: close": every request is a new TCP connection, a full
    TLS handshake (end to end, wrk ↔ upstream) and an SNI peek + upstream connect in the proxy. The
    handshakes run on core 0, so req/s is bounded there; CPU µs/req is the proxy's per-connection cost.
CPU µs/req = proxy utime+stime over the run ÷ requests; "proxy core busy" = that CPU time ÷ wall time
(near 100% means the proxy was the bottleneck).
EOF
