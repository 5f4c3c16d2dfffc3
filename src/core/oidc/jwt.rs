//! A JWT in JWS compact serialization (RFC 7515, 7519): `header.claims.signature`, each
//! base64url without padding. Only asymmetric algorithms the JWKS can name are accepted
//! (RS256, ES256): never `none`, never an HMAC (which a public key would "sign"). Claims
//! are read with the strict JSON reader: a claim named twice is refused, so no reader
//! can see another value than the one the rules matched.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use base64::Engine as _;
use thiserror::Error;

use crate::core::json_read::{self, Value};

/// Longest token accepted (GitHub's are about 1.2 KB).
pub const MAX_JWT_BYTES: usize = 16 * 1024;
/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const SKEW_SECONDS: u64 = 60;
/// Longest life (`exp - iat`) an ID token may claim: it cannot be revoked one by one, so
/// one that lives longer than any CI job would is refused. GitHub's live minutes,
/// GitLab's as long as their job's timeout.
pub const MAX_LIFETIME_SECONDS: u64 = 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA P-256 with SHA-256; the signature is `r || s`, 64 bytes.
    Es256,
}

impl Alg {
    pub fn parse(name: &str) -> Result<Alg, JwtError> {
        match name {
            "RS256" => Ok(Alg::Rs256),
            "ES256" => Ok(Alg::Es256),
            other => Err(JwtError::Algorithm(other.chars().take(16).collect())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwtError {
    #[error("not a JWT (three base64url parts separated by '.')")]
    NotAJwt,
    #[error("JWT longer than {MAX_JWT_BYTES} bytes")]
    TooLong,
    #[error("JWT {0} is not base64url without padding")]
    Base64(&'static str),
    #[error("JWT {0} is not a JSON object")]
    Json(&'static str),
    #[error("JWT algorithm {0:?} is not accepted (RS256 or ES256)")]
    Algorithm(String),
    #[error("JWT header names no key (kid)")]
    NoKeyId,
    #[error("JWT header has critical extensions (crit), which are not supported")]
    Critical,
    #[error("JWT claim {0} is missing or not of its type")]
    Claim(&'static str),
    #[error("JWT signature has the wrong length for its algorithm")]
    SignatureLength,
    #[error("JWT expired")]
    Expired,
    #[error("JWT is not valid yet (nbf)")]
    NotYetValid,
    #[error("JWT was issued in the future (iat)")]
    IssuedInFuture,
    #[error("JWT lives longer than {MAX_LIFETIME_SECONDS} s (exp - iat)")]
    TooLongLived,
}

/// The claims the checks and rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    /// `aud`: one string or a list of them.
    pub aud: Vec<String>,
    pub sub: String,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub iat: u64,
    /// Every other claim whose value is a string, a boolean or a whole number, as text
    /// (GitLab writes some booleans as strings): what rule patterns match.
    pub other: Vec<(String, String)>,
}

impl Claims {
    /// A claim's text, the registered ones included (`sub`, `iss`).
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            "iss" => Some(&self.iss),
            "sub" => Some(&self.sub),
            _ => self
                .other
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str()),
        }
    }

    /// `exp`, `nbf` and `iat` against `now` (Unix seconds), with [`SKEW_SECONDS`].
    pub fn check_times(&self, now: u64) -> Result<(), JwtError> {
        if now >= self.exp.saturating_add(SKEW_SECONDS) {
            return Err(JwtError::Expired);
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(SKEW_SECONDS))
        {
            return Err(JwtError::NotYetValid);
        }
        if self.iat > now.saturating_add(SKEW_SECONDS) {
            return Err(JwtError::IssuedInFuture);
        }
        if self.exp.saturating_sub(self.iat) > MAX_LIFETIME_SECONDS {
            return Err(JwtError::TooLongLived);
        }
        Ok(())
    }
}

/// A parsed JWT, its signature not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwt {
    pub alg: Alg,
    pub kid: String,
    pub claims: Claims,
    /// `header.claims` as sent: what the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// Whether `text` is shaped like a JWT rather than a nixflare token: where both are
/// accepted, this picks the parser (a JWT's header always starts `{"` → `eyJ`).
pub fn looks_like_jwt(text: &str) -> bool {
    text.starts_with("eyJ") && text.bytes().filter(|&b| b == b'.').count() == 2
}

fn decode(part: &str, what: &'static str) -> Result<Vec<u8>, JwtError> {
    BASE64URL.decode(part).map_err(|_| JwtError::Base64(what))
}

fn whole(value: &Value, name: &'static str) -> Result<u64, JwtError> {
    value.as_u64().ok_or(JwtError::Claim(name))
}

pub fn parse(text: &str) -> Result<Jwt, JwtError> {
    if text.len() > MAX_JWT_BYTES {
        return Err(JwtError::TooLong);
    }
    let mut parts = text.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::NotAJwt);
    };
    let header_json =
        json_read::parse(&decode(header, "header")?).map_err(|_| JwtError::Json("header"))?;
    if header_json.as_object().is_none() {
        return Err(JwtError::Json("header"));
    }
    let alg = Alg::parse(
        header_json
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| JwtError::Algorithm(String::new()))?,
    )?;
    if header_json.get("crit").is_some() {
        return Err(JwtError::Critical);
    }
    let kid = header_json
        .get("kid")
        .and_then(Value::as_str)
        .filter(|kid| !kid.is_empty())
        .ok_or(JwtError::NoKeyId)?
        .to_owned();
    let signature = decode(signature, "signature")?;
    let length_ok = match alg {
        Alg::Es256 => signature.len() == 64,
        // 2048 to 8192-bit moduli.
        Alg::Rs256 => (256..=1024).contains(&signature.len()),
    };
    if !length_ok {
        return Err(JwtError::SignatureLength);
    }
    let claims_json =
        json_read::parse(&decode(payload, "claims")?).map_err(|_| JwtError::Json("claims"))?;
    let entries = claims_json.as_object().ok_or(JwtError::Json("claims"))?;
    let text_of = |name: &'static str| {
        claims_json
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(JwtError::Claim(name))
    };
    let aud = match claims_json.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) if !many.is_empty() => many
            .iter()
            .map(|a| a.as_str().map(str::to_owned).ok_or(JwtError::Claim("aud")))
            .collect::<Result<_, _>>()?,
        _ => return Err(JwtError::Claim("aud")),
    };
    let optional = |name: &'static str| {
        claims_json
            .get(name)
            .map(|value| whole(value, name))
            .transpose()
    };
    let registered = ["iss", "aud", "sub", "exp", "nbf", "iat"];
    let other = entries
        .iter()
        .filter(|(key, _)| !registered.contains(&key.as_str()))
        .filter_map(|(key, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Bool(flag) => flag.to_string(),
                Value::Number(Some(n)) => n.to_string(),
                _ => return None,
            };
            Some((key.clone(), text))
        })
        .collect();
    let claims = Claims {
        iss: text_of("iss")?,
        aud,
        sub: text_of("sub")
            .ok()
            .filter(|sub| !sub.is_empty())
            .ok_or(JwtError::Claim("sub"))?,
        exp: whole(claims_json.get("exp").ok_or(JwtError::Claim("exp"))?, "exp")?,
        nbf: optional("nbf")?,
        iat: whole(claims_json.get("iat").ok_or(JwtError::Claim("iat"))?, "iat")?,
        other,
    };
    Ok(Jwt {
        alg,
        kid,
        claims,
        signing_input: format!("{header}.{payload}"),
        signature,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn encode(json: &str) -> String {
        BASE64URL.encode(json)
    }

    pub fn token(header: &str, claims: &str, signature_len: usize) -> String {
        format!(
            "{}.{}.{}",
            encode(header),
            encode(claims),
            BASE64URL.encode(vec![7u8; signature_len])
        )
    }

    pub const CLAIMS: &str = r#"{"iss":"https://token.actions.githubusercontent.com","aud":"https://cache.example.org","sub":"repo:owner/repo:ref:refs/heads/main","exp":2000,"nbf":1000,"iat":1000,"repository":"owner/repo","ref":"refs/heads/main","run_number":"17","ref_protected":true,"nested":{"a":1}}"#;

    #[test]
    fn reads_a_github_shaped_token() {
        let jwt = parse(&token(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            CLAIMS,
            256,
        ))
        .unwrap();
        assert_eq!((jwt.alg, jwt.kid.as_str()), (Alg::Rs256, "k1"));
        assert_eq!(jwt.claims.aud, ["https://cache.example.org"]);
        assert_eq!(jwt.claims.get("repository"), Some("owner/repo"));
        assert_eq!(jwt.claims.get("ref_protected"), Some("true"));
        assert_eq!(jwt.claims.get("nested"), None);
        assert_eq!(
            jwt.claims.get("sub"),
            Some("repo:owner/repo:ref:refs/heads/main")
        );
        assert!(jwt.signing_input.ends_with(&encode(CLAIMS)));
        assert!(looks_like_jwt(&token(
            r#"{"alg":"ES256","kid":"k"}"#,
            CLAIMS,
            64
        )));
        assert!(!looks_like_jwt("nxf1.abc"));
    }

    #[test]
    fn refuses_what_the_specs_refuse() {
        let refused = |header: &str, claims: &str, len: usize| parse(&token(header, claims, len));
        assert!(matches!(
            refused(r#"{"alg":"none","kid":"k"}"#, CLAIMS, 0),
            Err(JwtError::Algorithm(_))
        ));
        assert!(matches!(
            refused(r#"{"alg":"HS256","kid":"k"}"#, CLAIMS, 32),
            Err(JwtError::Algorithm(_))
        ));
        assert!(matches!(
            refused(r#"{"kid":"k"}"#, CLAIMS, 256),
            Err(JwtError::Algorithm(_))
        ));
        assert_eq!(
            refused(r#"{"alg":"RS256"}"#, CLAIMS, 256),
            Err(JwtError::NoKeyId)
        );
        assert_eq!(
            refused(r#"{"alg":"RS256","kid":"k","crit":["b64"]}"#, CLAIMS, 256),
            Err(JwtError::Critical)
        );
        assert_eq!(
            refused(r#"{"alg":"ES256","kid":"k"}"#, CLAIMS, 70),
            Err(JwtError::SignatureLength)
        );
        // A claim twice: which one a reader sees would depend on the reader.
        let twice = CLAIMS.replace(
            r#""repository":"owner/repo""#,
            r#""repository":"owner/repo","repository":"evil/repo""#,
        );
        assert_eq!(
            refused(r#"{"alg":"RS256","kid":"k"}"#, &twice, 256),
            Err(JwtError::Json("claims"))
        );
        let float_exp = CLAIMS.replace(r#""exp":2000"#, r#""exp":2000.5"#);
        assert_eq!(
            refused(r#"{"alg":"RS256","kid":"k"}"#, &float_exp, 256),
            Err(JwtError::Claim("exp"))
        );
        let no_aud = CLAIMS.replace(r#""aud":"https://cache.example.org","#, "");
        assert_eq!(
            refused(r#"{"alg":"RS256","kid":"k"}"#, &no_aud, 256),
            Err(JwtError::Claim("aud"))
        );
        let good = token(r#"{"alg":"RS256","kid":"k"}"#, CLAIMS, 256);
        assert_eq!(parse(&format!("{good}.x")), Err(JwtError::NotAJwt));
        assert_eq!(
            parse(&format!("{good}=")),
            Err(JwtError::Base64("signature"))
        );
        assert_eq!(
            parse(&"a".repeat(MAX_JWT_BYTES + 1)),
            Err(JwtError::TooLong)
        );
    }

    #[test]
    fn times_with_a_minute_of_skew() {
        let claims = parse(&token(r#"{"alg":"RS256","kid":"k"}"#, CLAIMS, 256))
            .unwrap()
            .claims;
        assert_eq!(claims.check_times(1000), Ok(()));
        assert_eq!(claims.check_times(2000 + SKEW_SECONDS - 1), Ok(()));
        assert_eq!(
            claims.check_times(2000 + SKEW_SECONDS),
            Err(JwtError::Expired)
        );
        assert_eq!(claims.check_times(1000 - SKEW_SECONDS), Ok(()));
        assert_eq!(
            claims.check_times(1000 - SKEW_SECONDS - 1),
            Err(JwtError::NotYetValid)
        );
        let future_iat = Claims {
            nbf: None,
            iat: 5000,
            ..claims.clone()
        };
        assert_eq!(future_iat.check_times(1500), Err(JwtError::IssuedInFuture));
        let for_ever = Claims {
            exp: 1000 + MAX_LIFETIME_SECONDS + 1,
            ..claims
        };
        assert_eq!(for_ever.check_times(1500), Err(JwtError::TooLongLived));
    }

    #[test]
    fn iat_and_a_subject_are_required() {
        let header = r#"{"alg":"RS256","kid":"k"}"#;
        let no_iat = CLAIMS.replace(r#""iat":1000,"#, "");
        assert_eq!(
            parse(&token(header, &no_iat, 256)),
            Err(JwtError::Claim("iat"))
        );
        let empty_sub = CLAIMS.replace("repo:owner/repo:ref:refs/heads/main", "");
        assert_eq!(
            parse(&token(header, &empty_sub, 256)),
            Err(JwtError::Claim("sub"))
        );
    }
}
