#!/usr/bin/env bash
# Data-plane throughput per core: sluice's gateway against nginx, HAProxy and squid, side by
# side in one run, with the direct connection as the baseline. Loopback only.
#
# Usage: bench/proxy-compare.sh [seconds]      (default 10 s per measurement, after a 2 s warm-up)
# Environment: MODES="http tls-origination passthrough passthrough-newconn absolute-uri
#              connect-tls mesh-hop idle-memory idle-connect" (that order, all by default), CONNS=50 (client
#              connections), ROUNDS=1 (measure every peer this many times, interleaved: round 1
#              runs each peer once, then round 2…; the table shows medians), RATE=1000 (req/s of
#              mesh-hop's fixed-rate run), IDLE_CONNS=5000 (idle-memory, idle-connect), KEEP=1 (keep the temp
#              dir with the configs), SLUICE_BIN (a sluice binary to measure instead of
#              building this checkout: to compare two commits, run once with each), PERF=DIR
#              (profile each proxy over its measured runs: `perf record` call graphs and
#              `perf stat` syscall counts per request into DIR, summed up in DIR/summary.txt;
#              the profilers cost the proxy CPU, so a run with PERF is for its profile, not its
#              table).
#
# The proxy modes (http … passthrough-newconn) measure sluice's gateway. absolute-uri and
# connect-tls measure `sluice sidecar` as the app's explicit proxy; mesh-hop the sidecar and the
# gateway together (mesh mTLS between them, as in docs/mesh.md); idle-memory the gateway's TLS
# passthrough holding idle connections, idle-connect the sidecar's CONNECT tunnels (TLS inside)
# against squid's. The modes wrk cannot drive (CONNECT, a fixed rate,
# holding connections) use bench/loadgen, a small Rust client built here on its own.
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
modes=${MODES:-"http tls-origination passthrough passthrough-newconn absolute-uri connect-tls mesh-hop idle-memory idle-connect"}
rounds=${ROUNDS:-1}
rate=${RATE:-1000}
idle_conns=${IDLE_CONNS:-5000}
warmup=2
wants() { # wants MODE...: true when MODES names one of them
  local m w
  for m in $modes; do for w in "$@"; do [ "$m" = "$w" ] && return 0; done; done
  return 1
}
for m in $modes; do
  case $m in
    http|tls-origination|passthrough|passthrough-newconn|absolute-uri|connect-tls|mesh-hop|idle-memory|idle-connect) ;;
    *) echo "unknown mode $m" >&2; exit 1 ;;
  esac
done
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
[ -z "${PERF:-}" ] || command -v perf >/dev/null || need+=(linux-perf)
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

if [ -n "${SLUICE_BIN:-}" ]; then
  sluice_bin=$SLUICE_BIN
else
  echo "building sluice (release)…" >&2
  nice -n 10 cargo build --release -q -p sluice
  sluice_bin=$PWD/target/release/sluice
fi
loadgen_bin=$PWD/bench/loadgen/target/release/sluice-loadgen
if wants connect-tls mesh-hop idle-memory idle-connect; then
  echo "building bench/loadgen (release)…" >&2
  nice -n 10 cargo build --release -q --manifest-path bench/loadgen/Cargo.toml
fi

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
# 182xx HTTP → HTTPS (TLS origination), 183xx TLS passthrough, 184xx explicit proxy
# (absolute-uri, connect-tls), 185xx the mesh hop's first proxy, 186xx idle-memory; xx: 01 sluice,
# 02 nginx, 03 HAProxy, 04 squid. sluice's admin APIs: 18100 (gateway), 18400 (sidecar), 18500
# (mesh-hop sidecar), 18510 (mesh-hop gateway, which serves the hop on 18511), 18600
# (idle-memory gateway). nginx's mesh-hop second proxy: 18522.
all_ports="18080 18443 18100 18101 18102 18103 18104 18201 18202 18203 18301 18302 18303"
wants absolute-uri connect-tls && all_ports+=" 18400 18401 18402 18403 18404"
wants mesh-hop && all_ports+=" 18500 18501 18502 18510 18511 18522"
wants idle-memory && all_ports+=" 18600 18601 18602 18603"
wants idle-connect && all_ports+=" 18604 18605 18606"
for p in $all_ports; do
  if (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port 127.0.0.1:$p is already in use; stop what holds it first" >&2; exit 1
  fi
done
if wants connect-tls idle-connect && (echo >/dev/tcp/127.0.18.43/443) 2>/dev/null; then
  echo "127.0.18.43:443 is already in use; stop what holds it first" >&2; exit 1
fi

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
if wants mesh-hop; then
  # nginx's mesh hop: a server certificate for its second proxy and a client certificate for its
  # first, from the same CA (ECDSA P-256, like the SVIDs `sluice ca` issues).
  for leaf in meshgw:gw.bench.test:serverAuth meshclient:bench-client:clientAuth; do
    IFS=: read -r name cn eku <<<"$leaf"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key" 2>/dev/null
    openssl req -new -key "$dir/$name.key" -subj "/CN=$cn" -out "$dir/$name.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=$eku" "subjectAltName=DNS:$cn" > "$dir/$name.cnf"
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 2 -sha256 -extfile "$dir/$name.cnf" -out "$dir/$name.pem" 2>/dev/null
  done
  # sluice's mesh: its own CA and SVIDs, as README's "Running the gateway and sidecars" does.
  "$sluice_bin" ca init --dir "$dir/mesh-ca" >/dev/null
  "$sluice_bin" ca issue --dir "$dir/mesh-ca" --namespace istio-system \
    --service-account istio-egressgateway-service-account --out "$dir/mesh-id/gateway" >/dev/null
  "$sluice_bin" ca issue --dir "$dir/mesh-ca" --namespace default --service-account bench \
    --out "$dir/mesh-id/bench" >/dev/null
fi
chmod 644 "$dir"/*.pem "$dir"/*.key

# --- the upstream: nginx, 1 worker, core 0, a fixed 100-byte body on HTTP and HTTPS -----------
body=$(printf 'x%.0s' $(seq 99))
mkdir -p "$dir/upstream" "$dir/nginx"
up_conns=4096
wants idle-memory idle-connect && up_conns=$((idle_conns + 4096))
# connect-tls: squid tunnels a CONNECT to an originserver peer only when the peer's port is the
# CONNECT's (443), so the upstream also answers HTTPS on 127.0.18.43:443 (same server, same worker).
up_connect_listen=""
wants connect-tls idle-connect && up_connect_listen="listen 127.0.18.43:443 ssl;"
cat > "$dir/upstream/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/upstream/nginx.pid;
error_log $dir/upstream/error.log warn;
events { worker_connections $up_conns; }
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
    $up_connect_listen
    ssl_certificate $dir/upstream.pem;
    ssl_certificate_key $dir/upstream.key;
    location / { return 200 "$body\n"; }
  }
}
EOF

# --- nginx as the proxy ------------------------------------------------------------------------
# absolute-uri: nginx parses an absolute-form request line itself ($host is the URI's host), so
# a plain proxy_pass server is its forward proxy for one upstream.
nginx_fwd=""
wants absolute-uri && nginx_fwd="server {
    listen 127.0.0.1:18402;
    location / {
      proxy_pass http://plain_up;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
    }
  }"
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
  $nginx_fwd
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
# absolute-uri: HAProxy's forward proxy for one upstream (it takes absolute-form requests as they are).
wants absolute-uri && cat >> "$dir/haproxy.cfg" <<EOF
frontend fwd_fe
  bind 127.0.0.1:18403
  default_backend plain_be
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

# --- the explicit-proxy modes (absolute-uri, connect-tls): sluice's sidecar and squid ------------
# The sidecar's Istio YAML: two external services, STATIC to the upstream (targetPort maps the
# service ports 80/443 to the upstream's 18080/18443). No DestinationRule asks for ISTIO_MUTUAL
# and no VirtualService names the egress gateway, so the sidecar forwards straight to them.
if wants absolute-uri connect-tls idle-connect; then
  mkdir -p "$dir/sidecar" "$dir/squidfwd"
  cat > "$dir/sidecar/bench.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: default}
spec:
  hosts: [plain.bench.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 18080}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tls, namespace: default}
spec:
  hosts: [tls.bench.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS, targetPort: 18443}]
  endpoints: [{address: 127.0.0.1}]
EOF
  "$sluice_bin" analyze "$dir/sidecar" >&2 || { echo "sluice analyze rejected the sidecar config" >&2; exit 1; }
  # squid as a forward proxy: the names do not resolve, so every request goes to an origin-server
  # peer chosen by domain (never_direct); CONNECT to tls.bench.test:443 is tunnelled to the
  # HTTPS peer (a peer marked originserver gets the tunnelled bytes, not a CONNECT; squid uses
  # one for CONNECT only when its port is the CONNECT's, hence the upstream's 127.0.18.43:443).
  chown proxy "$dir/squidfwd" 2>/dev/null || chmod 777 "$dir/squidfwd"
  cat > "$dir/squidfwd.conf" <<EOF
workers 1
http_port 127.0.0.1:18404
acl plain_dom dstdomain plain.bench.test
acl tls_dom dstdomain tls.bench.test
cache_peer 127.0.0.1 parent 18080 0 no-query originserver name=plainpeer
cache_peer_access plainpeer allow plain_dom
cache_peer_access plainpeer deny all
cache_peer 127.0.18.43 parent 443 0 no-query originserver name=tlspeer
cache_peer_access tlspeer allow tls_dom
cache_peer_access tlspeer deny all
never_direct allow all
http_access allow all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log $dir/squidfwd/cache.log
pid_filename $dir/squidfwd/squid.pid
coredump_dir $dir/squidfwd
shutdown_lifetime 0 seconds
EOF
  # idle-connect: a fresh squid per round, on its own port and files.
  mkdir -p "$dir/squididle"
  sed -e 's/127.0.0.1:18404/127.0.0.1:18606/' -e "s#$dir/squidfwd/#$dir/squididle/#" \
    "$dir/squidfwd.conf" > "$dir/squididle.conf"
  echo "max_filedescriptors $((2 * idle_conns + 1024))" >> "$dir/squididle.conf"
fi

# --- mesh-hop: sidecar → mesh mTLS → gateway, and nginx → nginx over mutual TLS ------------------
if wants mesh-hop; then
  mkdir -p "$dir/mesh" "$dir/mesh-a" "$dir/mesh-b"
  # One directory for both sluice processes, as in crates/sluice/tests/mesh_guide.rs: the gateway
  # takes the Gateway and the `egress` rules, the sidecar (namespace default) the `mesh` rules.
  cat > "$dir/mesh/bench.yaml" <<EOF
# The egress gateway's service outside Kubernetes (docs/mesh.md), reached with mesh mTLS.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 18511, name: https, protocol: HTTPS}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egressgateway-mtls, namespace: istio-system}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: istio-system}
spec:
  hosts: [plain.bench.test]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 18080}]
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 18511, name: https-mesh, protocol: HTTPS}
    hosts: [plain.bench.test]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: plain-via-egress, namespace: istio-system}
spec:
  hosts: [plain.bench.test]
  gateways: [mesh, egress]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 18511}}}]
  - match: [{gateways: [egress], port: 18511}]
    route: [{destination: {host: plain.bench.test, port: {number: 80}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bench-egress, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: egressgateway}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/bench]}}]
EOF
  "$sluice_bin" analyze "$dir/mesh" >&2 || { echo "sluice analyze rejected the mesh config" >&2; exit 1; }
  # nginx's equivalent: the first proxy (the app's) sends to the second over TLS with a client
  # certificate, verifying the second's; the second requires and verifies the client certificate,
  # allows one subject (its AuthorizationPolicy) and proxies to the upstream. Both keep every
  # connection alive, as sluice does.
  cat > "$dir/mesh-a/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/mesh-a/nginx.pid;
error_log $dir/mesh-a/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/mesh-a/tmp;
  proxy_temp_path $dir/mesh-a/tmp;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream mesh_gw { server 127.0.0.1:18522; keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:18502;
    location / {
      proxy_pass https://mesh_gw;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_ssl_certificate $dir/meshclient.pem;
      proxy_ssl_certificate_key $dir/meshclient.key;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $dir/ca.pem;
      proxy_ssl_name gw.bench.test;
      proxy_ssl_server_name on;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
  cat > "$dir/mesh-b/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/mesh-b/nginx.pid;
error_log $dir/mesh-b/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/mesh-b/tmp;
  proxy_temp_path $dir/mesh-b/tmp;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  ssl_session_cache shared:meshgw:10m;
  upstream plain_up { server 127.0.0.1:18080; keepalive 128; keepalive_requests 10000000; keepalive_timeout 300s; }
  map \$ssl_client_s_dn \$mesh_allowed { "CN=bench-client" 1; default 0; }
  server {
    listen 127.0.0.1:18522 ssl;
    ssl_certificate $dir/meshgw.pem;
    ssl_certificate_key $dir/meshgw.key;
    ssl_client_certificate $dir/ca.pem;
    ssl_verify_client on;
    location / {
      if (\$mesh_allowed = 0) { return 403; }
      proxy_pass http://plain_up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
EOF
fi

# --- idle-memory: fresh proxies that only pass TLS through by SNI --------------------------------
if wants idle-memory; then
  mkdir -p "$dir/idle" "$dir/idle-nginx"
  cat > "$dir/idle/bench.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 18601, name: tls-passthrough, protocol: TLS}
    hosts: [pass.bench.test]
    tls: {mode: PASSTHROUGH}
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
metadata: {name: pass, namespace: istio-system}
spec:
  hosts: [pass.bench.test]
  gateways: [egress]
  tls:
  - match: [{port: 18601, sniHosts: [pass.bench.test]}]
    route: [{destination: {host: pass.bench.test, port: {number: 18443}}}]
EOF
  "$sluice_bin" analyze "$dir/idle" >&2 || { echo "sluice analyze rejected the idle config" >&2; exit 1; }
  cat > "$dir/idle-nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile $((2 * idle_conns + 1024));
pid $dir/idle-nginx/nginx.pid;
error_log $dir/idle-nginx/error.log warn;
events { worker_connections $((2 * idle_conns + 1024)); }
stream {
  map \$ssl_preread_server_name \$pass_backend {
    pass.bench.test 127.0.0.1:18443;
    default 127.0.0.1:9;
  }
  server {
    listen 127.0.0.1:18602;
    ssl_preread on;
    proxy_pass \$pass_backend;
  }
}
EOF
  cat > "$dir/idle-haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $((idle_conns + 1024))
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend pass_fe
  bind 127.0.0.1:18603
  tcp-request inspect-delay 5s
  tcp-request content accept if { req.ssl_hello_type 1 }
  use_backend pass_be if { req.ssl_sni -i pass.bench.test }
backend pass_be
  server up 127.0.0.1:18443
EOF
fi

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
wait_ready() { # wait_ready ADMIN-PORT NAME: a sluice process's admin API says it is ready
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$1/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "$2 not ready:" >&2; cat "$dir/$2.out" >&2; exit 1
}
stop() { # stop PID: TERM, then KILL after 5 s (the cleanup trap still has it, harmlessly)
  kill "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
if wants absolute-uri connect-tls; then
  start sidecar $PROXY_CORE env SLUICE_LOG=warn "$sluice_bin" sidecar -c "$dir/sidecar" --namespace default \
    --service-account bench --listen 127.0.0.1:18401 --admin 127.0.0.1:18400
  wait_ready 18400 sidecar
  start squidfwd $PROXY_CORE squid -N -f "$dir/squidfwd.conf"
  wait_port 18404 squidfwd
fi
if wants mesh-hop; then
  start meshgw $PROXY_CORE env SLUICE_LOG=warn "$sluice_bin" gateway -c "$dir/mesh" --bind 127.0.0.1 \
    --admin 127.0.0.1:18510 --identity-dir "$dir/mesh-id/gateway"
  wait_ready 18510 meshgw
  start meshsc $PROXY_CORE env SLUICE_LOG=warn "$sluice_bin" sidecar -c "$dir/mesh" --namespace default \
    --service-account bench --listen 127.0.0.1:18501 --admin 127.0.0.1:18500 --identity-dir "$dir/mesh-id/bench"
  wait_ready 18500 meshsc
  start meshb $PROXY_CORE nginx -c "$dir/mesh-b/nginx.conf" -p "$dir/mesh-b" -e "$dir/mesh-b/error.log"
  wait_port 18522 meshb
  start mesha $PROXY_CORE nginx -c "$dir/mesh-a/nginx.conf" -p "$dir/mesh-a" -e "$dir/mesh-a/error.log"
  wait_port 18502 mesha
fi

cpu_ticks() { # utime+stime (clock ticks) of processes (PID or PID,PID…) and their children
  local total=0 p t top
  for top in ${1//,/ }; do
    for p in "$top" $(ps -o pid= --ppid "$top"); do
      t=$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)
      total=$((total + t))
    done
  done
  echo "$total"
}
rss_kib() { # VmRSS (KiB) of a process and its children, summed
  local total=0 p r
  for p in "$1" $(ps -o pid= --ppid "$1"); do
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${r:-0}))
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
# PERF=DIR: the proxy's processes (each named PID and its children) sampled by `perf record`
# and their system calls counted by `perf stat` while the measured run lasts.
prof_syscalls="accept4 read write recvfrom sendto readv writev recvmsg sendmsg epoll_wait epoll_pwait epoll_ctl connect setsockopt getsockopt getsockname getpeername close shutdown socket futex splice sched_yield ioctl fcntl mmap munmap madvise brk"
prof_pids=""
prof_start() { # prof_start MODE NAME PID
  prof_pids=""
  [ -n "${PERF:-}" ] && [ "$3" != - ] || return 0
  mkdir -p "$PERF"
  local top p pids=() events="task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter"
  for top in ${3//,/ }; do
    pids+=("$top")
    for p in $(ps -o pid= --ppid "$top"); do pids+=("$p"); done
  done
  prof_pids=$(IFS=,; echo "${pids[*]}")
  prof_tag=$(printf '%s--%s' "$1" "$2" | tr -c 'a-zA-Z0-9@.-' '_')
  for p in $prof_syscalls; do events+=",syscalls:sys_enter_$p"; done
  perf record -q -F 1999 -g -p "$prof_pids" -o "$PERF/$prof_tag.data" >/dev/null 2>&1 &
  prof_rec=$!
  perf stat -x, -e "$events" -p "$prof_pids" -o "$PERF/$prof_tag.stat" >/dev/null 2>&1 &
  prof_stat=$!
  sleep 0.2 # both attached before the measured run begins
}
prof_stop() { # prof_stop RESULT-LINE
  [ -n "$prof_pids" ] || return 0
  kill -INT "$prof_rec" "$prof_stat" 2>/dev/null || true
  wait "$prof_rec" "$prof_stat" 2>/dev/null || true
  echo "$1" > "$PERF/$prof_tag.result"
  perf report -i "$PERF/$prof_tag.data" --no-children --stdio -g none --percent-limit 0.4 \
    --sort dso,sym > "$PERF/$prof_tag.top.txt" 2>/dev/null || true
  perf report -i "$PERF/$prof_tag.data" --no-children --stdio -g none \
    --sort dso > "$PERF/$prof_tag.dso.txt" 2>/dev/null || true
  perf report -i "$PERF/$prof_tag.data" --no-children --stdio -g caller,0.5,callee --percent-limit 2 \
    --sort sym > "$PERF/$prof_tag.graph.txt" 2>/dev/null || true
  prof_pids=""
}
: > "$results"
wrk_script=$dir/bench.lua
measure() { # measure MODE NAME PID URL [wrk args...]   (PID "-" for direct; PID,PID for a pair)
  local mode=$1 name=$2 pid=$3 url=$4; shift 4
  taskset -c $LOAD_CORE wrk -t1 -c"$conns" -d${warmup}s -s "$wrk_script" "$@" "$url" >/dev/null 2>&1 || true
  local c0=0 c1=0 t0 t1 out
  prof_start "$mode" "$name" "$pid"
  [ "$pid" = - ] || c0=$(cpu_ticks "$pid")
  t0=$(date +%s%N)
  out=$(taskset -c $LOAD_CORE wrk -t1 -c"$conns" -d"${secs}s" -s "$wrk_script" "$@" "$url" 2>&1 | grep '^RESULT' || true)
  t1=$(date +%s%N)
  [ "$pid" = - ] || c1=$(cpu_ticks "$pid")
  prof_stop "$out"
  if [ -z "$out" ]; then echo "wrk failed for $mode/$name ($url)" >&2; return 0; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$name" "$pid" "$(( (c1 - c0) ))" "$(( (t1 - t0) / 1000 ))" "$out" >> "$results"
  echo "  $mode / $name: $out" >&2
}

measure_lg() { # measure_lg MODE NAME PID [loadgen args...]: as measure, with bench/loadgen
  local mode=$1 name=$2 pid=$3; shift 3
  taskset -c $LOAD_CORE "$loadgen_bin" -c "$conns" -d "$warmup" "$@" >/dev/null 2>&1 || true
  local c0=0 c1=0 t0 t1 out
  prof_start "$mode" "$name" "$pid"
  [ "$pid" = - ] || c0=$(cpu_ticks "$pid")
  t0=$(date +%s%N)
  out=$(taskset -c $LOAD_CORE "$loadgen_bin" -c "$conns" -d "$secs" "$@" 2>"$dir/loadgen.err" | grep '^RESULT' || true)
  t1=$(date +%s%N)
  [ "$pid" = - ] || c1=$(cpu_ticks "$pid")
  prof_stop "$out"
  if [ -z "$out" ]; then echo "loadgen failed for $mode/$name ($*):" >&2; cat "$dir/loadgen.err" >&2; return 0; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$name" "$pid" "$(( (c1 - c0) ))" "$(( (t1 - t0) / 1000 ))" "$out" >> "$results"
  echo "  $mode / $name: $out" >&2
}

# idle-memory, idle-connect: VmRSS of a fresh proxy before and after the loadgen holds
# IDLE_CONNS TLS connections through it (handshake completed with the upstream, then idle).
idle=$dir/idle.tsv
: > "$idle"
measure_idle() { # measure_idle MODE NAME PID LOADGEN-ARGS...
  local mode=$1 name=$2 pid=$3 before after lg line end_line
  shift 3
  sleep 1
  before=$(rss_kib "$pid")
  taskset -c $LOAD_CORE "$loadgen_bin" "$@" \
    --ca "$dir/ca.pem" --hold "$idle_conns" -c 64 -d 4 >"$dir/hold-$name.out" 2>&1 &
  lg=$!
  pids+=("$lg")
  line=""
  for _ in $(seq 1200); do # at most 120 s for the handshakes
    line=$(grep '^HOLD ' "$dir/hold-$name.out" || true)
    [ -n "$line" ] && break
    kill -0 "$lg" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$line" ]; then
    echo "loadgen --hold failed through $name:" >&2; cat "$dir/hold-$name.out" >&2; stop "$lg"; return 0
  fi
  sleep 2 # connections idle; let the proxy settle
  after=$(rss_kib "$pid")
  wait "$lg" 2>/dev/null || true
  end_line=$(grep '^HOLD_END ' "$dir/hold-$name.out" || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$name" "$before" "$after" "$line" "$end_line" >> "$idle"
  echo "  $mode / $name: RSS $before → $after KiB; $line; $end_line" >&2
}

host_hdr() { echo "Host: $1"; }
# absolute-uri: wrk sends `GET http://plain.bench.test/ HTTP/1.1` (its request path set to the
# absolute URI; the same pre-formatted request on every kept-alive connection).
cat "$dir/bench.lua" > "$dir/absolute.lua"
echo 'wrk.path = "http://plain.bench.test/"' >> "$dir/absolute.lua"

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
      for _ in $(seq "$rounds"); do
        measure http direct - http://127.0.0.1:18080/ "${h[@]}"
        measure http sluice "$pid_sluice" http://127.0.0.1:18101/ "${h[@]}"
        measure http nginx "$pid_nginx" http://127.0.0.1:18102/ "${h[@]}"
        measure http haproxy "$pid_haproxy" http://127.0.0.1:18103/ "${h[@]}"
        measure http squid "$pid_squid" http://127.0.0.1:18104/ "${h[@]}"
      done
      ;;
    tls-origination)
      r=(--resolve tls.bench.test:18443:127.0.0.1 --cacert "$dir/ca.pem")
      check https://tls.bench.test:18443/ "${r[@]}"
      check http://127.0.0.1:18201/ -H "$(host_hdr tls.bench.test)"
      check http://127.0.0.1:18202/ -H "$(host_hdr tls.bench.test)"
      check http://127.0.0.1:18203/ -H "$(host_hdr tls.bench.test)"
      h=(-H "$(host_hdr tls.bench.test)")
      for _ in $(seq "$rounds"); do
        measure tls-origination "direct (https)" - https://tls.bench.test:18443/
        measure tls-origination sluice "$pid_sluice" http://127.0.0.1:18201/ "${h[@]}"
        measure tls-origination nginx "$pid_nginx" http://127.0.0.1:18202/ "${h[@]}"
        measure tls-origination haproxy "$pid_haproxy" http://127.0.0.1:18203/ "${h[@]}"
      done
      ;;
    passthrough|passthrough-newconn)
      extra=()
      [ "$mode" = passthrough-newconn ] && extra=(-H "Connection: close")
      for p in 18443 18301 18302 18303; do
        check "https://pass.bench.test:$p/" --resolve "pass.bench.test:$p:127.0.0.1" --cacert "$dir/ca.pem"
      done
      for _ in $(seq "$rounds"); do
        measure "$mode" "direct (https)" - https://pass.bench.test:18443/ "${extra[@]}"
        measure "$mode" sluice "$pid_sluice" https://pass.bench.test:18301/ "${extra[@]}"
        measure "$mode" nginx "$pid_nginx" https://pass.bench.test:18302/ "${extra[@]}"
        measure "$mode" haproxy "$pid_haproxy" https://pass.bench.test:18303/ "${extra[@]}"
      done
      ;;
    absolute-uri)
      # Each proxy as the app's explicit HTTP proxy (curl -x sends the absolute form).
      for p in 18401 18402 18403 18404; do
        check http://plain.bench.test/ -x "http://127.0.0.1:$p"
      done
      wrk_script=$dir/absolute.lua
      h=(-H "$(host_hdr plain.bench.test)")
      for _ in $(seq "$rounds"); do
        measure absolute-uri direct - http://127.0.0.1:18080/ "${h[@]}"
        measure absolute-uri "sluice sidecar" "$pid_sidecar" http://127.0.0.1:18401/ "${h[@]}"
        measure absolute-uri nginx "$pid_nginx" http://127.0.0.1:18402/ "${h[@]}"
        measure absolute-uri haproxy "$pid_haproxy" http://127.0.0.1:18403/ "${h[@]}"
        measure absolute-uri squid "$pid_squidfwd" http://127.0.0.1:18404/ "${h[@]}"
      done
      wrk_script=$dir/bench.lua
      ;;
    connect-tls)
      # CONNECT tls.bench.test:443, then TLS to the upstream inside the tunnel (curl -x https://).
      for p in 18401 18404; do
        check https://tls.bench.test/ -x "http://127.0.0.1:$p" --cacert "$dir/ca.pem"
      done
      t=(--url https://tls.bench.test/ --ca "$dir/ca.pem")
      for _ in $(seq "$rounds"); do
        measure_lg connect-tls "direct (https)" - --url https://tls.bench.test:18443/ --addr 127.0.0.1:18443 --ca "$dir/ca.pem"
        measure_lg connect-tls "sluice sidecar" "$pid_sidecar" "${t[@]}" --connect 127.0.0.1:18401
        measure_lg connect-tls squid "$pid_squidfwd" "${t[@]}" --connect 127.0.0.1:18404
      done
      ;;
    mesh-hop)
      # app → first proxy (explicit, absolute form) → mutual TLS → second proxy → upstream.
      check http://plain.bench.test/ -x http://127.0.0.1:18501
      check http://plain.bench.test/ -x http://127.0.0.1:18502
      # The request crossed the mesh hop and the gateway's policy allowed it by its rule.
      curl -fs http://127.0.0.1:18510/stats/prometheus | grep -F 'sluice_authz_decisions_total{' \
        | grep -F 'decision="allowed"' | grep -qF 'policy="ns[istio-system]-policy[bench-egress]-rule[0]"' \
        || { echo "the mesh-hop gateway did not record an ALLOW by bench-egress" >&2; exit 1; }
      u=(--url http://plain.bench.test/)
      for _ in $(seq "$rounds"); do
        measure_lg mesh-hop direct - "${u[@]}" --addr 127.0.0.1:18080
        measure_lg mesh-hop "sluice sidecar → gateway" "$pid_meshsc,$pid_meshgw" "${u[@]}" --proxy 127.0.0.1:18501
        measure_lg mesh-hop "nginx → nginx" "$pid_mesha,$pid_meshb" "${u[@]}" --proxy 127.0.0.1:18502
      done
      for _ in $(seq "$rounds"); do
        measure_lg "mesh-hop @$rate/s" direct - "${u[@]}" --addr 127.0.0.1:18080 --rate "$rate"
        measure_lg "mesh-hop @$rate/s" "sluice sidecar → gateway" "$pid_meshsc,$pid_meshgw" "${u[@]}" --proxy 127.0.0.1:18501 --rate "$rate"
        measure_lg "mesh-hop @$rate/s" "nginx → nginx" "$pid_mesha,$pid_meshb" "${u[@]}" --proxy 127.0.0.1:18502 --rate "$rate"
      done
      ;;
    idle-memory)
      # One fresh proxy at a time, so each one's growth is its own; stopped when measured.
      for _ in $(seq "$rounds"); do
        start idlesluice $PROXY_CORE env SLUICE_LOG=warn "$sluice_bin" gateway -c "$dir/idle" --bind 127.0.0.1 --admin 127.0.0.1:18600
        wait_ready 18600 idlesluice
        check https://pass.bench.test:18601/ --resolve pass.bench.test:18601:127.0.0.1 --cacert "$dir/ca.pem"
        measure_idle idle-memory sluice "$pid_idlesluice" --url https://pass.bench.test/ --addr 127.0.0.1:18601
        stop "$pid_idlesluice"
        start idlenginx $PROXY_CORE nginx -c "$dir/idle-nginx/nginx.conf" -p "$dir/idle-nginx" -e "$dir/idle-nginx/error.log"
        wait_port 18602 idlenginx
        check https://pass.bench.test:18602/ --resolve pass.bench.test:18602:127.0.0.1 --cacert "$dir/ca.pem"
        measure_idle idle-memory nginx "$pid_idlenginx" --url https://pass.bench.test/ --addr 127.0.0.1:18602
        stop "$pid_idlenginx"
        start idlehaproxy $PROXY_CORE haproxy -db -f "$dir/idle-haproxy.cfg"
        wait_port 18603 idlehaproxy
        check https://pass.bench.test:18603/ --resolve pass.bench.test:18603:127.0.0.1 --cacert "$dir/ca.pem"
        measure_idle idle-memory haproxy "$pid_idlehaproxy" --url https://pass.bench.test/ --addr 127.0.0.1:18603
        stop "$pid_idlehaproxy"
      done
      ;;
    idle-connect)
      # CONNECT tls.bench.test:443 and TLS inside, held idle; one fresh proxy at a time.
      t=(--url https://tls.bench.test/ --connect)
      for _ in $(seq "$rounds"); do
        start idlesc $PROXY_CORE env SLUICE_LOG=warn "$sluice_bin" sidecar -c "$dir/sidecar" --namespace default \
          --service-account bench --listen 127.0.0.1:18605 --admin 127.0.0.1:18604
        wait_ready 18604 idlesc
        check https://tls.bench.test/ -x http://127.0.0.1:18605 --cacert "$dir/ca.pem"
        measure_idle idle-connect "sluice sidecar" "$pid_idlesc" "${t[@]}" 127.0.0.1:18605
        stop "$pid_idlesc"
        start idlesquid $PROXY_CORE squid -N -f "$dir/squididle.conf"
        wait_port 18606 idlesquid
        check https://tls.bench.test/ -x http://127.0.0.1:18606 --cacert "$dir/ca.pem"
        measure_idle idle-connect squid "$pid_idlesquid" "${t[@]}" 127.0.0.1:18606
        stop "$pid_idlesquid"
      done
      ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
  esac
done

# --- the table -----------------------------------------------------------------------------------
cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
echo
client="wrk -t1 -c$conns"
wants connect-tls mesh-hop && client+=" (bench/loadgen -c$conns for connect-tls and mesh-hop)"
echo "sluice proxy-compare, $(date -u +%Y-%m-%d), $(nproc) cores ($cpu_model), ${secs} s per run after ${warmup} s warm-up, $client"
echo "load average before the run: $load_before (other work on the machine skews the numbers: run twice, keep the better)"
echo "sluice $(git describe --always --dirty 2>/dev/null || echo '?'), $(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR==1{print $3}'), squid $(squid -v | awk 'NR==1{print $4}'), wrk $(wrk -v 2>&1 | awk 'NR==1{print $2}')"
echo
python3 - "$results" "$hz" "$idle" "$rounds" <<'PY'
import statistics, sys
raw = []
for line in open(sys.argv[1]):
    mode, name, pid, ticks, wall_us, res = line.rstrip("\n").split("\t")
    kv = dict(x.split("=") for x in res.split()[1:])
    req = int(kv["requests"]); dur = int(kv["duration_us"]) / 1e6
    cpu_s = int(ticks) / int(sys.argv[2])
    raw.append(dict(mode=mode, name=name, direct=(pid == "-"), rps=req / dur,
                    cpu_us=(cpu_s * 1e6 / req if req and pid != "-" else None),
                    busy=(cpu_s / (int(wall_us) / 1e6) if pid != "-" else None),
                    p50=int(kv["p50_us"]), p99=int(kv["p99_us"]),
                    errs=int(kv["sock_errors"]) + int(kv["status_errors"])))
# ROUNDS > 1: one row per mode and proxy, each figure the median of its rounds; errors summed.
def med(vs):
    vs = [v for v in vs if v is not None]
    return statistics.median(vs) if vs else None
rows = []
for key in dict.fromkeys((r["mode"], r["name"]) for r in raw):
    rs = [r for r in raw if (r["mode"], r["name"]) == key]
    rows.append(dict(mode=key[0], name=key[1], direct=rs[0]["direct"], runs=len(rs),
                     rps=med(r["rps"] for r in rs), cpu_us=med(r["cpu_us"] for r in rs),
                     busy=med(r["busy"] for r in rs), p50=med(r["p50"] for r in rs),
                     p99=med(r["p99"] for r in rs), errs=sum(r["errs"] for r in rs)))
def lat(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"
def is_nginx(name):
    return name == "nginx" or name.startswith("nginx ")
added = []
if rows:
    print("| mode | proxy | req/s | CPU µs/req | proxy core busy | p50 | p99 | req/s ÷ nginx | CPU/req ÷ nginx | req/s ÷ direct | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for mode in dict.fromkeys(r["mode"] for r in rows):
    rs = [r for r in rows if r["mode"] == mode]
    # The reference peer: nginx where it takes part, else the best peer (highest req/s), named
    # in the ratio cells.
    ng = next((r for r in rs if is_nginx(r["name"])), None)
    note = ""
    if ng is None:
        peers = [r for r in rs if not r["direct"] and not r["name"].startswith("sluice")]
        ng = max(peers, key=lambda r: r["rps"], default=None)
        note = f" (÷ {ng['name']})" if ng else ""
    di = next((r for r in rs if r["direct"]), None)
    for r in rs:
        cpu = f"{r['cpu_us']:.1f}" if r["cpu_us"] is not None else "–"
        busy = f"{r['busy'] * 100:.0f}%" if r["busy"] is not None else "–"
        rn = f"{r['rps'] / ng['rps']:.2f}{note}" if ng else "–"
        cn = f"{r['cpu_us'] / ng['cpu_us']:.2f}{note}" if ng and r["cpu_us"] and ng["cpu_us"] else "–"
        rd = f"{r['rps'] / di['rps']:.2f}" if di else "–"
        print(f"| {mode} | {r['name']} | {r['rps']:,.0f} | {cpu} | {busy} | {lat(r['p50'])} | {lat(r['p99'])} | {rn} | {cn} | {rd} | {r['errs']} |")
        if "@" in mode and di and not r["direct"]:
            added.append(f"{r['name']} {(r['p99'] - di['p99']) / 1000:+.2f} ms")
    if "@" in mode and added:
        print()
        print(f"{mode}: p99 added over direct (target ≤ 1 ms for sluice): " + "; ".join(added))
        added = []

idle = [l.rstrip("\n").split("\t") for l in open(sys.argv[3])]
if idle:
    res = []
    for mode, name, before, after, hold, end in idle:
        kv = dict(x.split("=") for x in (hold + " " + end).split() if "=" in x)
        n = int(kv.get("opened", 0))
        res.append(dict(mode=mode, name=name, n=n, before=int(before), after=int(after),
                        per=(int(after) - int(before)) / n if n else None,
                        closed=kv.get("closed_while_idle", "?"), errs=int(kv.get("errors", 0))))
    groups = {}
    for r in res:
        groups.setdefault((r["mode"], r["name"]), []).append(r)
    print()
    print("| mode | proxy | connections held | RSS before | RSS after | KiB per connection | ÷ nginx | ÷ best peer | closed while idle | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (mode, name), rs in groups.items():
        ng = med(r["per"] for r in groups.get((mode, "nginx"), []))
        # The target: sluice's idle tunnel no larger than the best peer's (same mode).
        peers = [p for p in (med(r["per"] for r in g) for (m, n), g in groups.items()
                             if m == mode and not n.startswith("sluice")) if p]
        best = min(peers) if peers else None
        per = med(r["per"] for r in rs)
        pn = f"{per / ng:.2f}" if per is not None and ng else "–"
        pb = f"{per / best:.2f}" if per is not None and best else "–"
        print(f"| {mode} | {name} | {med(r['n'] for r in rs):,.0f} | {med(r['before'] for r in rs) / 1024:.1f} MiB"
              f" | {med(r['after'] for r in rs) / 1024:.1f} MiB | {per:.2f} | {pn} | {pb} | {','.join(str(r['closed']) for r in rs)}"
              f" | {sum(r['errs'] for r in rs)} |")
if int(sys.argv[4]) > 1:
    print()
    print(f"Each figure is the median of {sys.argv[4]} rounds (peers measured in turn within each round).")
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
  absolute-uri = each proxy as the app's explicit HTTP proxy: wrk sends "GET http://plain.bench.test/"
    (absolute form, kept alive). sluice = \`sluice sidecar\` (ServiceEntry STATIC, targetPort 18080, no mesh
    hop); nginx = a proxy_pass server (nginx takes the absolute form itself); HAProxy = mode http frontend;
    squid = forward proxy (http_port, never_direct, originserver cache_peer by dstdomain).
  connect-tls = CONNECT tls.bench.test:443, then TLS to the upstream inside the tunnel, requests kept
    alive (bench/loadgen): sluice sidecar (ServiceEntry TLS 443 → 18443) vs squid (the only peer that
    tunnels CONNECT; its originserver cache_peer, the upstream's 127.0.18.43:443, gets the tunnelled bytes).
  mesh-hop = app → first proxy → mutual TLS → second proxy → upstream, both proxies on core $PROXY_CORE and
    their CPU summed: sluice sidecar → mesh mTLS (ISTIO_MUTUAL, SVIDs from \`sluice ca\`) → sluice gateway
    (HTTPS ISTIO_MUTUAL server, AuthorizationPolicy ALLOW for the sidecar's principal) vs nginx →
    proxy_pass https with a client certificate → nginx (ssl_verify_client on, subject allowed by a map)
    → upstream. Closed loop (bench/loadgen, CONNS connections), then "@RATE/s" at a fixed rate,
    where p99 is counted from when each request was due; "p99 added" = proxy p99 − direct p99.
  idle-connect = a fresh proxy (sluice sidecar, squid) holds IDLE_CONNS CONNECT tls.bench.test:443 tunnels
    with a completed TLS handshake inside each (bench/loadgen --hold --connect), then idle; as idle-memory.
  idle-memory = a fresh proxy (sluice gateway TLS PASSTHROUGH, nginx stream ssl_preread, HAProxy mode tcp)
    holds IDLE_CONNS TLS connections opened by bench/loadgen --hold (handshake completed with the
    upstream, then idle); KiB per connection = (VmRSS after − VmRSS before) ÷ connections, VmRSS summed
    over the proxy's processes.
CPU µs/req = proxy utime+stime over the run ÷ requests; "proxy core busy" = that CPU time ÷ wall time
(near 100% means the proxy was the bottleneck).
EOF

# --- PERF=DIR: per request, what each profiled proxy spent and which system calls it made ----------
if [ -n "${PERF:-}" ] && ls "$PERF"/*.stat >/dev/null 2>&1; then
  python3 - "$PERF" > "$PERF/summary.txt" <<'PY'
import glob, os, sys
d = sys.argv[1]
print("per request (requests from the client's RESULT line; perf's own overhead included)")
for stat in sorted(glob.glob(os.path.join(d, "*.stat"))):
    tag = os.path.basename(stat)[:-5]
    try:
        res = open(os.path.join(d, tag + ".result")).read().split()
        req = int(dict(x.split("=") for x in res[1:])["requests"])
    except (OSError, KeyError, ValueError):
        continue
    if not req:
        continue
    ev = {}
    for line in open(stat):
        f = line.strip().split(",")
        if len(f) > 2 and f[0] and f[0][0].isdigit():
            try:
                ev[f[2]] = float(f[0])
            except ValueError:
                pass
    kernel = user = 0.0
    dso = os.path.join(d, tag + ".dso.txt")
    if os.path.exists(dso):
        for line in open(dso):
            f = line.split()
            if len(f) >= 2 and f[0].endswith("%") and f[0][0].isdigit():
                share = float(f[0][:-1])
                if f[1] == "[kernel.kallsyms]":
                    kernel += share
                else:
                    user += share
    print(f"\n{tag}: {req} requests, task-clock {ev.get('task-clock', 0) * 1e3 / req:.1f} µs, "
          f"context switches {ev.get('context-switches', 0) / req:.2f}, "
          f"syscalls {ev.get('raw_syscalls:sys_enter', 0) / req:.2f}; samples in the kernel {kernel:.0f} %, "
          f"in user space {user:.0f} % (≈ {ev.get('task-clock', 0) * 1e3 / req * user / 100:.1f} µs)")
    calls = sorted(((v / req, k.split("sys_enter_")[1]) for k, v in ev.items() if "sys_enter_" in k), reverse=True)
    print("  " + ", ".join(f"{n} {c:.2f}" for c, n in calls if c >= 0.01))
PY
  cat "$PERF/summary.txt"
fi
