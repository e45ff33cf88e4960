#!/usr/bin/env bash
# The guide's production setup (Step 10) on loopback: a mesh CA, the egress gateway, two
# workloads' sidecars, a partner stand-in with its own CA, and a DNS stand-in. Sends the
# allowed call (payment-service) and the refused one (reporting), then stops everything.
# Needs: sluice (or SLUICE=/path/to/sluice), openssl, curl, python3, and the right to bind
# port 443 on 127.0.20.x (root, or `sudo sysctl net.ipv4.ip_unprivileged_port_start=0`).
set -euo pipefail
SLUICE=${SLUICE:-sluice}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
GW=127.0.20.1 PARTNER=127.0.20.2 PAY=127.0.20.3 REP=127.0.20.4 DNS=127.0.20.5:5353
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Waits until http://$1/ready answers 200 (at most 20 s).
ready() {
  for _ in $(seq 200); do
    curl -sf -o /dev/null "http://$1/ready" && return 0
    sleep 0.1
  done
  echo "not ready: $1" >&2
  return 1
}

# 1. The mesh CA and one SVID per workload.
"$SLUICE" ca init --dir "$WORK/ca" >/dev/null
"$SLUICE" ca issue --dir "$WORK/ca" --namespace istio-system \
  --service-account istio-egressgateway-service-account --out "$WORK/gateway" >/dev/null
for sa in payment-service reporting; do
  "$SLUICE" ca issue --dir "$WORK/ca" --namespace production --service-account "$sa" \
    --out "$WORK/$sa" >/dev/null
done

# 2. The partner: api.payment-provider.com with its own CA (openssl s_server), and DNS.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=partner-ca -keyout "$WORK/partner-ca.key" -out "$WORK/partner-ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj /CN=api.payment-provider.com -keyout "$WORK/partner.key" -out "$WORK/partner.csr" 2>/dev/null
printf 'subjectAltName=DNS:api.payment-provider.com\n' >"$WORK/san.ext"
openssl x509 -req -days 1 -in "$WORK/partner.csr" -CA "$WORK/partner-ca.crt" \
  -CAkey "$WORK/partner-ca.key" -CAcreateserial -extfile "$WORK/san.ext" \
  -out "$WORK/partner.crt" 2>/dev/null
openssl s_server -quiet -www -accept "$PARTNER:443" -cert "$WORK/partner.crt" \
  -key "$WORK/partner.key" </dev/null >/dev/null 2>&1 &
pids+=($!)
python3 "$HERE/../dns.py" "$DNS" "api.payment-provider.com=$PARTNER" &
pids+=($!)

# 3. The egress gateway and the two sidecars, all with the same Istio YAML.
CONFIG=(-c "$HERE/production-egress-setup.yaml" -c "$HERE/cluster.yaml")
COMMON=(--dns-server "$DNS" --allow-range 127.0.0.0/8)
"$SLUICE" gateway "${CONFIG[@]}" "${COMMON[@]}" --bind "$GW" --admin "$GW:15000" \
  --identity-dir "$WORK/gateway" >"$WORK/gateway.log" 2>"$WORK/gateway.err" &
pids+=($!)
for w in "payment-service $PAY" "reporting $REP"; do
  set -- $w
  "$SLUICE" sidecar "${CONFIG[@]}" "${COMMON[@]}" --namespace production \
    --service-account "$1" --listen "$2:15001" --admin "$2:15000" \
    --identity-dir "$WORK/$1" >"$WORK/$1.log" 2>"$WORK/$1.err" &
  pids+=($!)
done
ready "$GW:15000" && ready "$PAY:15000" && ready "$REP:15000"

# 4. The calls: each app uses its sidecar as HTTPS_PROXY and trusts the partner's CA.
status=0
if curl -sS --fail --max-time 10 -o /dev/null -x "http://$PAY:15001" \
  --cacert "$WORK/partner-ca.crt" https://api.payment-provider.com/; then
  echo "ALLOWED: payment-service reached https://api.payment-provider.com/ (200)"
else
  echo "UNEXPECTED: payment-service was refused"; status=1
fi
if curl -sS --fail --max-time 10 -o /dev/null -x "http://$REP:15001" \
  --cacert "$WORK/partner-ca.crt" https://api.payment-provider.com/ 2>/dev/null; then
  echo "UNEXPECTED: reporting got through"; status=1
else
  echo "REFUSED: reporting was refused at the gateway (AuthorizationPolicy payment-api-authz)"
fi
curl -s "http://$GW:15000/stats/prometheus" | grep '^istio_tcp_connections_opened_total' || true
exit $status
