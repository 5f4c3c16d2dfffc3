//! OIDC ID tokens (JWTs a CI provider issues: GitHub Actions, GitLab CI, any issuer with
//! OIDC discovery) as credentials, checked as the OIDC and JWT specs require and no
//! looser. Pure, so the host tests and fuzzes it:
//!
//! - [`jwt`]: the compact JWS, its header and claims, and the time checks;
//! - [`rules`]: the operator's rules (`OIDC_RULES`) mapping issuer, audience and claim
//!   patterns to permissions and a subject;
//! - [`jwks`]: the issuer's keys (discovery document, JWKS) and when to fetch them again.
//!
//! The signature itself is the edge's: the runtime's WebCrypto verifies it (RS256,
//! ES256) with the key [`jwks`] names, so no RSA code enters the wasm.
//!
//! Status: the core only. The edge (WebCrypto, fetching JWKS, accepting a JWT where a
//! token goes) and the CLI's ID-token requests are not wired yet.

pub mod jwks;
pub mod jwt;
pub mod rules;
