//! `security.istio.io` kinds.

pub mod authorization_policy;
pub mod peer_authentication;

pub use authorization_policy::AuthorizationPolicy;
pub use peer_authentication::PeerAuthentication;
