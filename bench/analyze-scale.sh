#!/usr/bin/env bash
# Load + validate + analyze at scale: 10,000 ServiceEntries and 1,000 VirtualServices (plus a
# Gateway and DestinationRules), in 1,100 files, the way a large mesh keeps its config.
# Usage: bench/analyze-scale.sh [runs]   (builds sluice in release mode first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

python3 - "$dir" <<'PY'
import os, sys
d = sys.argv[1]
gw = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: ["*"]
    tls: {mode: PASSTHROUGH}
"""
open(os.path.join(d, "gateway.yaml"), "w").write(gw)
for f in range(100):
    docs = []
    for i in range(100):
        n = f * 100 + i
        docs.append(f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-{n}, namespace: team-{n % 50}}}
spec:
  hosts: [api-{n}.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {{number: 443, name: tls, protocol: TLS}}
  - {{number: 80, name: http, protocol: HTTP}}
""")
    open(os.path.join(d, f"se-{f:03}.yaml"), "w").write("---\n".join(docs))
for n in range(1000):
    vs = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: route-{n}, namespace: team-{n % 50}}}
spec:
  hosts: [api-{n}.example.com]
  gateways: [istio-system/egress, mesh]
  http:
  - match:
    - uri: {{prefix: /v1}}
      headers: {{x-team: {{exact: team-{n % 50}}}}}
    route:
    - destination: {{host: api-{n}.example.com, port: {{number: 443}}, subset: v1}}
      weight: 90
    - destination: {{host: api-{n}.example.com, port: {{number: 443}}, subset: v2}}
      weight: 10
    timeout: 5s
    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: "5xx,connect-failure"}}
  tls:
  - match:
    - sniHosts: [api-{n}.example.com]
      port: 443
    route:
    - destination: {{host: api-{n}.example.com, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr-{n}, namespace: team-{n % 50}}}
spec:
  host: api-{n}.example.com
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""
    open(os.path.join(d, f"vs-{n:04}.yaml"), "w").write(vs)
PY

cargo build --release -q -p sluice
bin=target/release/sluice
echo "config: $(find "$dir" -name '*.yaml' | wc -l) files, $(du -sh "$dir" | cut -f1)"
"$bin" analyze "$dir" -o json > "$dir.out" || true
echo "diagnostics on this config: $(grep -c "\"code\"" "$dir.out" || true)"
rm -f "$dir.out"
times=()
for _ in $(seq "$runs"); do
  start=$(date +%s.%N)
  "$bin" analyze "$dir" -o json >/dev/null || true
  end=$(date +%s.%N)
  times+=("$(python3 -c "print($end - $start)")")
done
printf '%s\n' "${times[@]}" | sort -n | awk -v runs="$runs" '
  {t[NR]=$1} END {printf "analyze 10,000 SE + 1,000 VS + 1,000 DR: median %.3f s, min %.3f s, max %.3f s over %d runs\n", t[int((NR+1)/2)], t[1], t[NR], runs}'
