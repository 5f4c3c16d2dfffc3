//! CI providers' ID tokens at the edge: the core screens a token and says which key and
//! rules apply (`crate::core::oidc`); this fetches the issuer's keys (discovery, then
//! JWKS, over https, per isolate, within the core's refresh bound) and has the runtime's
//! WebCrypto check the signature.

use std::cell::RefCell;

use js_sys::{Array, Object, Reflect, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CryptoKey, SubtleCrypto};
use worker::{AbortSignal, Fetch, Method, Request, RequestInit, RequestRedirect};

use crate::core::credential::Credential;
use crate::core::oidc::jwks::{self, Key, KeyCache, Lookup};
use crate::core::oidc::jwt::{Alg, Jwt};
use crate::core::oidc::rules::Rule;
use crate::core::oidc::{self, OidcRefusal};

/// Largest discovery document or JWKS taken (GitHub's are about 2 KB). Checked against
/// Content-Length before reading; a chunked answer is read whole first: the issuer is
/// one the operator named.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// A fetch of the issuer's keys gives up after this long: requests meanwhile get 503.
const FETCH_TIMEOUT_MS: u32 = 5_000;

thread_local! {
    /// The issuers' keys this isolate fetched. No borrow is held across an await.
    static KEYS: RefCell<KeyCache> = RefCell::new(KeyCache::default());
}

/// Checks an ID token completely: screened by the core (issuer, audience, times), its
/// key found in the issuer's JWKS, its signature verified, its claims admitted by a rule.
/// `origin` is the request's `scheme://host[:port]` (the audience of a rule naming none).
pub async fn verify(
    rules: &[Rule],
    text: &str,
    now_ms: u64,
    origin: &str,
) -> Result<Credential, OidcRefusal> {
    let token = oidc::screen(rules, text, now_ms / 1000, origin)?;
    let key = key_for(&token, now_ms).await?;
    if key.alg != token.alg {
        return Err(OidcRefusal::KeyAlgorithm(token.kid.clone()));
    }
    if !signature_verifies(&key, &token).await {
        return Err(OidcRefusal::Signature);
    }
    oidc::admit(rules, &token, origin)
}

async fn key_for(token: &Jwt, now_ms: u64) -> Result<Key, OidcRefusal> {
    let issuer = token.claims.iss.as_str();
    let lookup = KEYS.with(|keys| keys.borrow().lookup(issuer, &token.kid, now_ms));
    match lookup {
        Lookup::Use(key) => return Ok(key),
        Lookup::Unknown => return Err(OidcRefusal::UnknownKey(token.kid.clone())),
        Lookup::Unavailable => return Err(OidcRefusal::KeysUnavailable),
        Lookup::Fetch => {}
    }
    KEYS.with(|keys| keys.borrow_mut().fetching(issuer, now_ms));
    match fetch_keys(issuer).await {
        Ok(fetched) => KEYS.with(|keys| keys.borrow_mut().fetched(issuer, fetched, now_ms)),
        Err(why) => {
            worker::console_error!("fetching the keys of {issuer} failed: {why}");
            KEYS.with(|keys| keys.borrow_mut().fetch_failed(issuer, now_ms));
        }
    }
    // Again: the new keys, or (the fetch failed) the old ones while they may serve.
    match KEYS.with(|keys| keys.borrow().lookup(issuer, &token.kid, now_ms)) {
        Lookup::Use(key) => Ok(key),
        Lookup::Unknown => Err(OidcRefusal::UnknownKey(token.kid.clone())),
        Lookup::Fetch | Lookup::Unavailable => Err(OidcRefusal::KeysUnavailable),
    }
}

/// The issuer's discovery document, then the JWKS it names.
async fn fetch_keys(issuer: &str) -> Result<Vec<Key>, String> {
    let discovery = get(&format!("{issuer}/.well-known/openid-configuration")).await?;
    let jwks_uri = jwks::jwks_uri(&discovery, issuer).map_err(|e| e.to_string())?;
    let jwks = get(&jwks_uri).await?;
    jwks::parse_jwks(&jwks).map_err(|e| e.to_string())
}

async fn get(url: &str) -> Result<Vec<u8>, String> {
    let mut init = RequestInit::new();
    // Discovery names the JWKS; a redirect elsewhere is not followed.
    init.with_method(Method::Get)
        .with_redirect(RequestRedirect::Manual);
    let request = Request::new_with_init(url, &init).map_err(|e| format!("{url}: {e}"))?;
    let deadline = AbortSignal::from(web_sys::AbortSignal::timeout_with_u32(FETCH_TIMEOUT_MS));
    let mut response = Fetch::Request(request)
        .send_with_signal(&deadline)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status_code();
    if status != 200 {
        return Err(format!("{url} answered HTTP {status}"));
    }
    let declared = response.headers().get("Content-Length").ok().flatten();
    if declared.and_then(|n| n.parse::<usize>().ok()).unwrap_or(0) > MAX_DOCUMENT_BYTES {
        return Err(format!("{url} is larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if body.len() > MAX_DOCUMENT_BYTES {
        return Err(format!("{url} is larger than {MAX_DOCUMENT_BYTES} bytes"));
    }
    Ok(body)
}

/// WebCrypto's verdict; any failure to import the key or run the check is "no".
async fn signature_verifies(key: &Key, token: &Jwt) -> bool {
    match webcrypto_verify(key, token).await {
        Ok(verdict) => verdict,
        Err(err) => {
            worker::console_error!("WebCrypto could not check a signature: {err:?}");
            false
        }
    }
}

async fn webcrypto_verify(key: &Key, token: &Jwt) -> Result<bool, JsValue> {
    let subtle: SubtleCrypto = Reflect::get(&js_sys::global(), &"crypto".into())
        .and_then(|crypto| Reflect::get(&crypto, &"subtle".into()))?
        .unchecked_into();
    let (kty, import, check) = match key.alg {
        Alg::Rs256 => (
            "RSA",
            object(&[("name", "RSASSA-PKCS1-v1_5"), ("hash", "SHA-256")])?,
            object(&[("name", "RSASSA-PKCS1-v1_5")])?,
        ),
        Alg::Es256 => (
            "EC",
            object(&[("name", "ECDSA"), ("namedCurve", "P-256")])?,
            object(&[("name", "ECDSA"), ("hash", "SHA-256")])?,
        ),
    };
    let mut members = vec![("kty", kty), ("alg", key.alg.name())];
    members.extend(
        key.members
            .iter()
            .map(|(name, value)| (*name, value.as_str())),
    );
    let jwk = object(&members)?;
    let usages = Array::of1(&"verify".into());
    let crypto_key: CryptoKey =
        JsFuture::from(subtle.import_key_with_object("jwk", &jwk, &import, false, &usages)?)
            .await?
            .unchecked_into();
    let signature = Uint8Array::from(token.signature.as_slice());
    let data = Uint8Array::from(token.signing_input.as_bytes());
    let verdict = JsFuture::from(
        subtle.verify_with_object_and_buffer_source_and_buffer_source(
            &check,
            &crypto_key,
            &signature,
            &data,
        )?,
    )
    .await?;
    Ok(verdict.as_bool() == Some(true))
}

fn object(members: &[(&str, &str)]) -> Result<Object, JsValue> {
    let object = Object::new();
    for (name, value) in members {
        Reflect::set(&object, &(*name).into(), &(*value).into())?;
    }
    Ok(object)
}
