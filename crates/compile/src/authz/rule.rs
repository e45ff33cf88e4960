//! One AuthorizationPolicy rule → its compiled form, following Istio's `authz/model` (which
//! attribute each field and `when` key becomes) and its value syntax (`matcher` package).

use ipnet::IpNet;
use sluice_model::security::authorization_policy::{Condition as When, Operation, Rule, Source};
use sluice_snapshot::authz::{
    self as snap, Condition, Glob, PathMatch, ServiceAccount, StrMatch, Values,
};

/// A compiled rule, with the attributes in it that sluice never knows.
pub(super) struct Compiled {
    pub rule: snap::Rule,
    /// (field path, attribute) of every condition compiled as [`Condition::Unsupported`].
    pub unsupported: Vec<(String, String)>,
}

/// A value that cannot be compiled: where, and why.
#[derive(Debug)]
pub(super) struct RuleError {
    pub path: String,
    pub message: String,
}

/// Compiles rule `index` of a policy in `namespace` (the namespace fills in service accounts
/// written without one).
pub(super) fn compile(rule: &Rule, index: usize, namespace: &str) -> Result<Compiled, RuleError> {
    let mut c = Conditions {
        base: format!("spec.rules[{index}]"),
        namespace,
        unsupported: Vec::new(),
    };
    let mut out = snap::Rule::default();
    for (j, from) in rule.from.iter().enumerate() {
        // A `from` without `source` is rejected by Istio's webhook; its builder reads it as
        // "any source", and so does sluice.
        let conds = match &from.source {
            Some(src) => c.source(src, &format!("from[{j}].source"))?,
            None => Vec::new(),
        };
        out.from.push(conds);
    }
    for (j, to) in rule.to.iter().enumerate() {
        let conds = match &to.operation {
            Some(op) => c.operation(op, &format!("to[{j}].operation"))?,
            None => Vec::new(),
        };
        out.to.push(conds);
    }
    for (j, when) in rule.when.iter().enumerate() {
        if let Some(cond) = c.when(when, &format!("when[{j}]"))? {
            out.when.push(cond);
        }
    }
    Ok(Compiled {
        rule: out,
        unsupported: c.unsupported,
    })
}

struct Conditions<'a> {
    base: String,
    namespace: &'a str,
    unsupported: Vec<(String, String)>,
}

type Parse<T> = fn(&str) -> Result<T, String>;

impl Conditions<'_> {
    fn path(&self, rel: &str) -> String {
        format!("{}.{rel}", self.base)
    }

    /// `values`/`notValues` of one attribute, parsed; `None` when both are empty (Istio adds no
    /// condition then).
    fn values<T>(
        &self,
        values: &[String],
        not_values: &[String],
        at: &str,
        not_at: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<Values<T>>, RuleError> {
        if values.is_empty() && not_values.is_empty() {
            return Ok(None);
        }
        let parse_all = |list: &[String], at: &str| {
            list.iter()
                .enumerate()
                .map(|(k, v)| {
                    parse(v).map_err(|message| RuleError {
                        path: self.path(&format!("{at}[{k}]")),
                        message,
                    })
                })
                .collect::<Result<Vec<T>, RuleError>>()
        };
        Ok(Some(Values::new(
            parse_all(values, at)?,
            parse_all(not_values, not_at)?,
        )))
    }

    fn unsupported(&mut self, present: bool, at: String, key: &str) -> Option<Condition> {
        present.then(|| {
            self.unsupported.push((at, key.to_owned()));
            Condition::Unsupported {
                key: key.to_owned(),
            }
        })
    }

    fn source(&mut self, s: &Source, at: &str) -> Result<Vec<Condition>, RuleError> {
        let ns = self.namespace.to_owned();
        let field = |f: &str| format!("{at}.{f}");
        let mut out = Vec::new();
        let sa = |v: &str| service_account(v, &ns);
        let str_match: Parse<StrMatch> = |v| Ok(StrMatch::parse(v));
        let glob: Parse<Glob> = |v| Ok(Glob(v.to_owned()));
        let ip: Parse<IpNet> = ip_or_cidr;
        let (p, np) = (field("principals"), field("notPrincipals"));
        out.extend(
            self.values(&s.principals, &s.not_principals, &p, &np, str_match)?
                .map(Condition::Principal),
        );
        let (n, nn) = (field("namespaces"), field("notNamespaces"));
        out.extend(
            self.values(&s.namespaces, &s.not_namespaces, &n, &nn, glob)?
                .map(Condition::Namespace),
        );
        let (a, na) = (field("serviceAccounts"), field("notServiceAccounts"));
        out.extend(
            self.values(&s.service_accounts, &s.not_service_accounts, &a, &na, sa)?
                .map(Condition::ServiceAccount),
        );
        let (i, ni) = (field("ipBlocks"), field("notIpBlocks"));
        out.extend(
            self.values(&s.ip_blocks, &s.not_ip_blocks, &i, &ni, ip)?
                .map(Condition::SourceIp),
        );
        let (r, nr) = (field("remoteIpBlocks"), field("notRemoteIpBlocks"));
        out.extend(
            self.values(&s.remote_ip_blocks, &s.not_remote_ip_blocks, &r, &nr, ip)?
                .map(Condition::RemoteIp),
        );
        let jwt = !s.request_principals.is_empty() || !s.not_request_principals.is_empty();
        let jwt_at = if s.request_principals.is_empty() {
            "notRequestPrincipals"
        } else {
            "requestPrincipals"
        };
        out.extend(self.unsupported(jwt, self.path(&field(jwt_at)), jwt_at));
        Ok(out)
    }

    fn operation(&mut self, o: &Operation, at: &str) -> Result<Vec<Condition>, RuleError> {
        let field = |f: &str| format!("{at}.{f}");
        let str_match: Parse<StrMatch> = |v| Ok(StrMatch::parse(v));
        let mut out = Vec::new();
        let (h, nh) = (field("hosts"), field("notHosts"));
        out.extend(
            self.values(&o.hosts, &o.not_hosts, &h, &nh, str_match)?
                .map(Condition::Host),
        );
        let (p, np) = (field("ports"), field("notPorts"));
        out.extend(
            self.values(&o.ports, &o.not_ports, &p, &np, port)?
                .map(Condition::DestinationPort),
        );
        let (m, nm) = (field("methods"), field("notMethods"));
        out.extend(
            self.values(&o.methods, &o.not_methods, &m, &nm, str_match)?
                .map(Condition::Method),
        );
        let (pa, npa) = (field("paths"), field("notPaths"));
        out.extend(
            self.values(&o.paths, &o.not_paths, &pa, &npa, PathMatch::parse)?
                .map(Condition::Path),
        );
        Ok(out)
    }

    /// A `when` condition, by Istio's attribute names (`authz/model/model.go`). Keys Istio's
    /// builder does not know are errors: it skips such a rule, sluice fails closed.
    fn when(&mut self, w: &When, at: &str) -> Result<Option<Condition>, RuleError> {
        let key = w.key.as_str();
        let (v, nv) = (format!("{at}.values"), format!("{at}.notValues"));
        let ns = self.namespace.to_owned();
        let str_match: Parse<StrMatch> = |v| Ok(StrMatch::parse(v));
        let ip: Parse<IpNet> = ip_or_cidr;
        let vals = (&w.values, &w.not_values);
        let cond = match key {
            "source.ip" => self
                .values(vals.0, vals.1, &v, &nv, ip)?
                .map(Condition::SourceIp),
            "remote.ip" => self
                .values(vals.0, vals.1, &v, &nv, ip)?
                .map(Condition::RemoteIp),
            "destination.ip" => self
                .values(vals.0, vals.1, &v, &nv, ip)?
                .map(Condition::DestinationIp),
            "destination.port" => self
                .values(vals.0, vals.1, &v, &nv, port)?
                .map(Condition::DestinationPort),
            "connection.sni" => self
                .values(vals.0, vals.1, &v, &nv, str_match)?
                .map(Condition::Sni),
            "source.principal" => self
                .values(vals.0, vals.1, &v, &nv, str_match)?
                .map(Condition::Principal),
            "source.namespace" => self
                .values(vals.0, vals.1, &v, &nv, |v| Ok(Glob(v.to_owned())))?
                .map(Condition::Namespace),
            "source.serviceAccount" => self
                .values(vals.0, vals.1, &v, &nv, |v| service_account(v, &ns))?
                .map(Condition::ServiceAccount),
            "source.trustDomain" => self
                .values(vals.0, vals.1, &v, &nv, str_match)?
                .map(Condition::TrustDomain),
            _ if key.starts_with("request.headers") => {
                let name = bracketed(&key["request.headers".len()..]).ok_or_else(|| RuleError {
                    path: self.path(&format!("{at}.key")),
                    message: format!("bad key ({key}): should have format request.headers[<name>]"),
                })?;
                self.values(vals.0, vals.1, &v, &nv, str_match)?
                    .map(|values| Condition::Header {
                        name: name.to_ascii_lowercase(),
                        values,
                    })
            }
            _ if key.starts_with("request.auth.")
                || key.starts_with("experimental.envoy.filters.")
                || key.starts_with("request.experimental.inline.headers") =>
            {
                let present = !w.values.is_empty() || !w.not_values.is_empty();
                self.unsupported(present, self.path(&format!("{at}.key")), key)
            }
            _ => {
                return Err(RuleError {
                    path: self.path(&format!("{at}.key")),
                    message: format!("unknown attribute {key:?}"),
                });
            }
        };
        Ok(cond)
    }
}

/// `[name]` → `name`, as Istio's `extractNameInBrackets`.
fn bracketed(s: &str) -> Option<&str> {
    s.strip_prefix('[')?
        .strip_suffix(']')
        .filter(|n| !n.is_empty() && !n.contains(['[', ']']))
}

/// Istio's `AddrStrToCidrRange`: an address (a /32 or /128) or a CIDR range.
fn ip_or_cidr(v: &str) -> Result<IpNet, String> {
    if v.contains('/') {
        v.parse::<IpNet>()
            .map_err(|e| format!("bad CIDR range ({v}): {e}"))
    } else {
        v.parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("bad IP address ({v})"))
    }
}

/// A port, as Go's `strconv.ParseUint` reads it (digits only).
fn port(v: &str) -> Result<u16, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad port ({v})"));
    }
    v.parse::<u16>()
        .map_err(|_| format!("bad port ({v}): must be in the range 0..65535"))
}

/// `<namespace>/<name>`, or `<name>` in the policy's namespace.
fn service_account(v: &str, namespace: &str) -> Result<ServiceAccount, String> {
    let (ns, name) = v.split_once('/').unwrap_or((namespace, v));
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!(
            "invalid service account {v:?}: must be <namespace>/<name> or <name>"
        ));
    }
    Ok(ServiceAccount {
        namespace: ns.to_owned(),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_istio_reads_them() {
        assert_eq!(
            ip_or_cidr("1.2.3.4").map(|n| n.to_string()),
            Ok("1.2.3.4/32".into())
        );
        assert_eq!(
            ip_or_cidr("::1").map(|n| n.to_string()),
            Ok("::1/128".into())
        );
        assert!(ip_or_cidr("10.0.0.0/33").is_err());
        assert!(ip_or_cidr("10.0.0.256").is_err());
        assert_eq!(port("5432"), Ok(5432));
        assert!(port("+80").is_err());
        assert!(port("65536").is_err());
        assert_eq!(
            service_account("sa", "ns"),
            Ok(ServiceAccount {
                namespace: "ns".into(),
                name: "sa".into()
            })
        );
        assert!(service_account("a/b/c", "ns").is_err());
        assert_eq!(bracketed("[x-foo]"), Some("x-foo"));
        assert_eq!(bracketed("x-foo"), None);
        assert_eq!(bracketed("[]"), None);
    }
}
