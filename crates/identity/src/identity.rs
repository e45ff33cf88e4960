//! Workload identities as parsed values (ztunnel `src/identity/manager.rs`), so authorization
//! compares trust domain, namespace and service account, never raw strings that could differ
//! only in spelling (`spiffe://Cluster.local/...`, a trailing slash, `%2F`).
//!
//! Parsing follows the SPIFFE ID specification as strictly as go-spiffe does (lowercase scheme
//! and trust domain, path segments of `[A-Za-z0-9._-]`, no `.`/`..`, no empty segments, no
//! query, fragment, port or user info), plus Istio's shape `/ns/<ns>/sa/<sa>`.

use std::fmt;
use std::str::FromStr;

/// The scheme every SPIFFE ID starts with.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// The trust domain Istio and sluice use unless told otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// SPIFFE: "URIs ... MUST NOT exceed 2048 bytes".
const MAX_ID_LEN: usize = 2048;
/// SPIFFE: "Trust domain names ... MUST NOT exceed 255 characters".
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A workload identity. One variant today; an enum so that other identity kinds (ztunnel has
/// the same shape) can be added without changing how callers match on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    Spiffe {
        trust_domain: String,
        namespace: String,
        service_account: String,
    },
}

/// Why a string is not an identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a SPIFFE ID: it must start with {SPIFFE_SCHEME}")]
    MissingScheme,
    #[error("SPIFFE ID is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("invalid character {0:?} in trust domain (allowed: a-z 0-9 . - _)")]
    TrustDomainChar(char),
    #[error("SPIFFE ID path must be /ns/<namespace>/sa/<service-account>, got {0:?}")]
    Path(String),
    #[error("invalid {what} {value:?}: use 1+ of A-Z a-z 0-9 . - _ (not . or ..)")]
    Segment { what: &'static str, value: String },
}

impl Identity {
    /// A SPIFFE identity from its parts, each validated as in [`FromStr`].
    pub fn spiffe(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_trust_domain(trust_domain)?;
        validate_segment("namespace", namespace)?;
        validate_segment("service account", service_account)?;
        let id = Identity::Spiffe {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        // The parts are bounded individually; the whole must still fit in a URI SAN.
        if id.to_string().len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong);
        }
        Ok(id)
    }

    /// Parses Istio's principal form `<td>/ns/<ns>/sa/<sa>` (AuthorizationPolicy `principals`,
    /// `source.principal`). Wildcards are the policy engine's business, not an identity's.
    pub fn from_principal(principal: &str) -> Result<Self, IdentityError> {
        parse_after_scheme(principal)
    }

    /// Istio's principal form: the SPIFFE ID without `spiffe://`.
    pub fn principal(&self) -> String {
        match self {
            Identity::Spiffe {
                trust_domain,
                namespace,
                service_account,
            } => format!("{trust_domain}/ns/{namespace}/sa/{service_account}"),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        match self {
            Identity::Spiffe { trust_domain, .. } => trust_domain,
        }
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        match self {
            Identity::Spiffe { namespace, .. } => namespace,
        }
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        match self {
            Identity::Spiffe {
                service_account, ..
            } => service_account,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_SCHEME}{}", self.principal())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong);
        }
        // The scheme is matched case-sensitively on purpose: SPIFFE requires producers to emit
        // it in lowercase, and accepting variants would create two spellings of one identity.
        let rest = s
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or(IdentityError::MissingScheme)?;
        parse_after_scheme(rest)
    }
}

/// Parses `<td>/ns/<ns>/sa/<sa>`.
fn parse_after_scheme(rest: &str) -> Result<Identity, IdentityError> {
    let (trust_domain, path) = match rest.split_once('/') {
        Some((td, path)) => (td, path),
        None => (rest, ""),
    };
    validate_trust_domain(trust_domain)?;
    // Exactly four segments; `split` keeps empty ones, so `ns//sa/x` or a trailing `/` fail.
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        ["ns", namespace, "sa", service_account] => {
            Identity::spiffe(trust_domain, namespace, service_account)
        }
        _ => Err(IdentityError::Path(format!("/{path}"))),
    }
}

/// SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`. This also rules out a port
/// (`:`), user info (`@`), a query (`?`) and a fragment (`#`).
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    if td.is_empty() {
        return Err(IdentityError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdentityError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(IdentityError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

/// SPIFFE path segment: 1+ of `[A-Za-z0-9._-]`, and not `.` or `..` (which would make two
/// spellings of one path). Percent-encoding is not allowed, for the same reason.
fn validate_segment(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Segment {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep() -> Identity {
        Identity::Spiffe {
            trust_domain: "cluster.local".into(),
            namespace: "default".into(),
            service_account: "sleep".into(),
        }
    }

    #[test]
    fn round_trips() {
        let s = "spiffe://cluster.local/ns/default/sa/sleep";
        let id: Identity = s.parse().expect("valid");
        assert_eq!(id, sleep());
        assert_eq!(id.to_string(), s);
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(Identity::from_principal(&id.principal()), Ok(id.clone()));
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "sleep");
    }

    #[test]
    fn accepts_spiffe_characters() {
        for s in [
            "spiffe://example.org/ns/istio-system/sa/istio-egressgateway-service-account",
            "spiffe://td_1-2.x/ns/My.Ns/sa/SA_1",
            "spiffe://a/ns/n/sa/s",
        ] {
            let id: Identity = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed() {
        use IdentityError::*;
        let long = format!("spiffe://cluster.local/ns/{}/sa/x", "n".repeat(MAX_ID_LEN));
        let long_td = format!("spiffe://{}/ns/n/sa/s", "t".repeat(256));
        let cases: &[(&str, IdentityError)] = &[
            ("", MissingScheme),
            ("cluster.local/ns/default/sa/sleep", MissingScheme),
            ("SPIFFE://cluster.local/ns/a/sa/b", MissingScheme),
            ("https://cluster.local/ns/a/sa/b", MissingScheme),
            ("spiffe:/cluster.local/ns/a/sa/b", MissingScheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///ns/a/sa/b", EmptyTrustDomain),
            ("spiffe://Cluster.local/ns/a/sa/b", TrustDomainChar('C')),
            ("spiffe://cluster.local:443/ns/a/sa/b", TrustDomainChar(':')),
            ("spiffe://u@cluster.local/ns/a/sa/b", TrustDomainChar('@')),
            ("spiffe://cluster.local", Path("/".into())),
            ("spiffe://cluster.local/", Path("/".into())),
            ("spiffe://cluster.local/ns/a", Path("/ns/a".into())),
            ("spiffe://cluster.local/ns/a/sa", Path("/ns/a/sa".into())),
            (
                "spiffe://cluster.local/ns/a/sa/b/",
                Path("/ns/a/sa/b/".into()),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b/c",
                Path("/ns/a/sa/b/c".into()),
            ),
            (
                "spiffe://cluster.local/sa/b/ns/a",
                Path("/sa/b/ns/a".into()),
            ),
            (
                "spiffe://cluster.local/NS/a/sa/b",
                Path("/NS/a/sa/b".into()),
            ),
            (
                "spiffe://cluster.local//ns/a/sa/b",
                Path("//ns/a/sa/b".into()),
            ),
            ("spiffe://cluster.local/ns//sa/b", segment("namespace", "")),
            (
                "spiffe://cluster.local/ns/../sa/b",
                segment("namespace", ".."),
            ),
            (
                "spiffe://cluster.local/ns/./sa/b",
                segment("namespace", "."),
            ),
            (
                "spiffe://cluster.local/ns/a%2Fb/sa/c",
                segment("namespace", "a%2Fb"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b?x=1",
                segment("service account", "b?x=1"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b#f",
                segment("service account", "b#f"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b c",
                segment("service account", "b c"),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/é",
                segment("service account", "é"),
            ),
            (&long, TooLong),
            (&long_td, TrustDomainTooLong),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Identity>().as_ref(), Err(want), "{input:?}");
        }
    }

    fn segment(what: &'static str, value: &str) -> IdentityError {
        IdentityError::Segment {
            what,
            value: value.into(),
        }
    }

    #[test]
    fn constructor_validates_parts() {
        assert_eq!(
            Identity::spiffe("cluster.local", "default", "sleep"),
            Ok(sleep())
        );
        assert!(Identity::spiffe("Cluster.local", "default", "sleep").is_err());
        assert!(Identity::spiffe("cluster.local", "a/b", "sleep").is_err());
        assert!(Identity::spiffe("cluster.local", "default", "").is_err());
        assert!(Identity::spiffe("cluster.local", "default", &"s".repeat(MAX_ID_LEN)).is_err());
    }

    #[test]
    fn compares_values() {
        let a: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().expect("valid");
        let b = Identity::from_principal("cluster.local/ns/a/sa/b").expect("valid");
        assert_eq!(a, b);
        let other: Identity = "spiffe://cluster.local/ns/a/sa/c".parse().expect("valid");
        assert_ne!(a, other);
    }
}
