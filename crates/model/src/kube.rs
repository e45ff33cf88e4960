//! Kubernetes Services among the inputs, as the mesh sees them: what Istio's Kubernetes
//! registry makes of `kind: Service` (`pilot/pkg/serviceregistry/kube/conversion.go`), as
//! ServiceEntries — so `kubectl get svc -A -o yaml > cluster.yaml` registers the cluster's
//! services for sluice as the cluster registers them for Istio.
//!
//! - host `<name>.<namespace>.svc.cluster.local`, `MESH_INTERNAL`;
//! - each port with its protocol from `appProtocol`, else the port name's prefix (`http-`,
//!   `https-`, `http2-`, `grpc-`, `tls-`, `tcp-`, `mongo-`, `redis-`, `mysql-`; Istio's
//!   `ConvertProtocol`), else TCP (Istio would sniff; sluice does not) — and `targetPort`;
//! - the endpoints of the `Endpoints` or `EndpointSlice` objects of the Service among the
//!   inputs (`STATIC`), else the name resolved by DNS (`DNS`), as a stand-in for the cluster's
//!   own endpoint discovery; an `ExternalName` Service resolves its external name.
//!
//! A ServiceEntry of the inputs for the same host is preferred by the registry.

pub mod secret;

use serde_json::{Value, json};

use crate::networking::ServiceEntry;
use crate::resource::{OtherObject, Resource};

/// The cluster domain Istio assumes.
const DOMAIN: &str = "svc.cluster.local";

/// The ServiceEntries Istio's Kubernetes registry would make of the Services in `others`.
pub fn services_as_entries(others: &[Resource<OtherObject>]) -> Vec<Resource<ServiceEntry>> {
    others
        .iter()
        .filter(|o| o.spec.kind == "Service" && o.api_version == "v1")
        .filter_map(|svc| {
            let spec = entry_spec(svc, others)?;
            let spec: ServiceEntry = serde_json::from_value(spec).ok()?;
            Some(Resource {
                api_version: "networking.istio.io/v1".into(),
                meta: svc.meta.clone(),
                spec,
                source: svc.source.clone(),
            })
        })
        .collect()
}

fn entry_spec(svc: &Resource<OtherObject>, others: &[Resource<OtherObject>]) -> Option<Value> {
    let spec = svc.spec.body.get("spec")?;
    let ns = svc.namespace();
    let host = format!("{}.{ns}.{DOMAIN}", svc.name());
    let mut ports = Vec::new();
    for (i, p) in spec.get("ports")?.as_array()?.iter().enumerate() {
        let number = p.get("port")?.as_u64()?;
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("port-{i}"), str::to_owned);
        let protocol = protocol(
            p.get("appProtocol").and_then(Value::as_str),
            &name,
            p.get("protocol").and_then(Value::as_str),
        );
        let mut port = json!({"number": number, "name": name, "protocol": protocol});
        if let Some(t) = p.get("targetPort").and_then(Value::as_u64) {
            port["targetPort"] = json!(t);
        }
        ports.push(port);
    }
    if ports.is_empty() {
        return None;
    }
    let mut out = json!({
        "hosts": [host],
        "ports": ports,
        "location": "MESH_INTERNAL",
    });
    if let Some(external) = spec.get("externalName").and_then(Value::as_str) {
        out["resolution"] = json!("DNS");
        out["endpoints"] = json!([{"address": external}]);
        return Some(out);
    }
    let endpoints = endpoints_of(svc, others);
    if endpoints.is_empty() {
        out["resolution"] = json!("DNS");
    } else {
        out["resolution"] = json!("STATIC");
        out["endpoints"] = Value::Array(endpoints);
    }
    if let Some(ip) = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| *ip != "None" && !ip.is_empty())
    {
        out["addresses"] = json!([ip]);
    }
    Some(out)
}

/// Istio's `kube.ConvertProtocol`: `appProtocol` first, then the port name's prefix; UDP is
/// not served (reported by the compiler as any UDP port is).
fn protocol(app: Option<&str>, name: &str, l4: Option<&str>) -> &'static str {
    if l4 == Some("UDP") {
        return "UDP";
    }
    let by = |s: &str| -> Option<&'static str> {
        let s = s.to_ascii_lowercase();
        Some(match s.as_str() {
            "http" => "HTTP",
            "https" => "HTTPS",
            "http2" | "h2c" | "kubernetes.io/h2c" => "HTTP2",
            "grpc" | "grpc-web" => "GRPC",
            "tls" => "TLS",
            "tcp" => "TCP",
            "mongo" => "MONGO",
            "redis" => "REDIS",
            "mysql" => "MYSQL",
            "kubernetes.io/ws" | "kubernetes.io/wss" => "HTTP",
            _ => return None,
        })
    };
    app.and_then(by)
        .or_else(|| by(name.split('-').next().unwrap_or(name)))
        .unwrap_or("TCP")
}

/// The addresses of the Service's `Endpoints` / `EndpointSlice` objects among the inputs,
/// with their ports by name.
fn endpoints_of(svc: &Resource<OtherObject>, others: &[Resource<OtherObject>]) -> Vec<Value> {
    let ns = svc.namespace();
    let mut out = Vec::new();
    for o in others.iter().filter(|o| o.namespace() == ns) {
        match o.spec.kind.as_str() {
            "Endpoints" if o.name() == svc.name() => {
                for subset in o.spec.body["subsets"].as_array().into_iter().flatten() {
                    let ports = port_map(&subset["ports"]);
                    for a in subset["addresses"].as_array().into_iter().flatten() {
                        if let Some(ip) = a["ip"].as_str() {
                            out.push(json!({"address": ip, "ports": ports}));
                        }
                    }
                }
            }
            "EndpointSlice"
                if o.meta.labels.get("kubernetes.io/service-name")
                    == Some(&svc.name().to_owned()) =>
            {
                let ports = port_map(&o.spec.body["ports"]);
                for e in o.spec.body["endpoints"].as_array().into_iter().flatten() {
                    let ready = e["conditions"]["ready"].as_bool() != Some(false);
                    for ip in e["addresses"].as_array().into_iter().flatten() {
                        if let (true, Some(ip)) = (ready, ip.as_str()) {
                            out.push(json!({"address": ip, "ports": ports}));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn port_map(ports: &Value) -> Value {
    let mut map = serde_json::Map::new();
    for p in ports.as_array().into_iter().flatten() {
        if let (Some(name), Some(port)) = (p["name"].as_str(), p["port"].as_u64()) {
            map.insert(name.to_owned(), json!(port));
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use crate::load_str;

    /// The Istio task's `my-nginx` Service (egress-gateway-tls-origination), and a Service
    /// with an EndpointSlice.
    #[test]
    fn services_become_mesh_internal_entries() {
        let loaded = load_str(
            "cluster.yaml",
            r#"
apiVersion: v1
kind: Service
metadata: {name: my-nginx, namespace: mesh-external, labels: {run: my-nginx}}
spec:
  ports:
  - {port: 443, protocol: TCP}
  selector: {run: my-nginx}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http-web, port: 80, targetPort: 8080}
  - {name: grpc, port: 9000, appProtocol: grpc}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-abc, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http-web, port: 8080}]
endpoints:
- addresses: ["127.0.0.9"]
- addresses: ["127.0.0.10"]
  conditions: {ready: false}
"#,
        );
        let entries = &loaded.resources.kube_services;
        assert_eq!(entries.len(), 2, "{:?}", loaded.diagnostics);
        let nginx = &entries[0].spec;
        assert_eq!(nginx.hosts, ["my-nginx.mesh-external.svc.cluster.local"]);
        assert_eq!(
            serde_json::to_value(&nginx.ports[0]).expect("json")["protocol"],
            "TCP"
        );
        let api = serde_json::to_value(&entries[1].spec).expect("json");
        assert_eq!(api["ports"][0]["protocol"], "HTTP");
        assert_eq!(api["ports"][0]["targetPort"], 8080);
        assert_eq!(api["ports"][1]["protocol"], "GRPC");
        assert_eq!(api["resolution"], "STATIC");
        assert_eq!(api["endpoints"].as_array().map(Vec::len), Some(1));
        assert_eq!(api["addresses"][0], "10.96.0.10");
    }
}
