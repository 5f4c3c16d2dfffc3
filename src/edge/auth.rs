//! Credentials at the edge. A nixflare token: the core parses and verifies it
//! (`crate::core::token`); the edge adds the one thing that needs storage, the
//! revocation check. A CI provider's ID token (a JWT, told apart by its shape):
//! [`super::oidc`] checks it against the issuer's keys and `OIDC_RULES`; it has no
//! revocation (it lives minutes; changing the rules revokes). Readers of a private
//! cache go through [`admit_reader`], which remembers admitted nixflare tokens per
//! isolate (`crate::core::reader`); guarded operations check everything on every request.

use std::cell::RefCell;

use worker::{Bucket, Env, Request};

use super::error::EdgeError;
use super::index_client::IndexClient;
use crate::core::config::CacheConfig;
use crate::core::credential::Credential;
use crate::core::oidc::jwt::looks_like_jwt;
use crate::core::reader::{self, Lookup, ReadTokens, TokenRefusal};
use crate::core::route::Route;
use crate::core::token::Permissions;

/// What a guarded operation works with: the configuration, the bucket, and a credential
/// that passed every check for the permission the operation needs.
pub struct Guarded {
    pub config: CacheConfig,
    pub bucket: Bucket,
    pub credential: Credential,
    env: Env,
}

impl Guarded {
    pub async fn open(req: &Request, env: &Env, needs: Permissions) -> Result<Guarded, EdgeError> {
        let config = super::config(env)?;
        let bucket = super::bucket(env)?;
        let credential = authorize(req, &config, &bucket, needs).await?;
        Ok(Guarded {
            config,
            bucket,
            credential,
            env: env.clone(),
        })
    }

    /// The index (a Durable Object): only guarded operations ever reach it.
    pub fn index(&self) -> Result<IndexClient, EdgeError> {
        Ok(IndexClient::open(&self.env)?)
    }

    /// Whether the token may learn who published or pinned what (subjects, token ids):
    /// tokens that may write; a read-only token sees what an anonymous reader sees.
    pub fn may_see_who(&self) -> bool {
        self.credential.permissions.contains(Permissions::WRITE)
    }

    /// Now, in Unix milliseconds, as the index records it (`TEST_CLOCK_OFFSET_SECONDS`
    /// added).
    pub fn now_ms(&self) -> u64 {
        self.config.clock_ms(worker::Date::now().as_millis())
    }
}

/// Checks the credential: a nixflare token present, well-formed, signed by a token key,
/// unexpired, carrying `needs`, and not revoked (one R2 HEAD); or an ID token that
/// [`super::oidc::verify`] admits with `needs`.
async fn authorize(
    req: &Request,
    config: &CacheConfig,
    bucket: &Bucket,
    needs: Permissions,
) -> Result<Credential, EdgeError> {
    let header = req.headers().get("Authorization")?;
    let text = reader::token_text(header.as_deref()).map_err(refused)?;
    let now_ms = worker::Date::now().as_millis();
    if looks_like_jwt(text.trim()) {
        return ci_identity(config, req, &text, now_ms, needs).await;
    }
    let token = reader::check(&text, &config.token_keys, now_ms, needs).map_err(refused)?;
    let revocation = Route::Revocation(token.id).to_string();
    if bucket.head(&revocation).await?.is_some() {
        return Err(refused(TokenRefusal::Revoked(token.id)));
    }
    Ok(Credential::from(&token))
}

/// An ID token's identity, if it carries `needs`.
async fn ci_identity(
    config: &CacheConfig,
    req: &Request,
    text: &str,
    now_ms: u64,
    needs: Permissions,
) -> Result<Credential, EdgeError> {
    // Not `req.url()`: the url crate's IDNA tables would add ~85 KB gzip of wasm.
    let url = req.inner().url();
    let origin = crate::core::http::origin(&url).unwrap_or_default();
    super::oidc::verify(&config.oidc_rules, text, now_ms, origin)
        .await
        .map_err(TokenRefusal::from)
        .and_then(|credential| credential.require(needs))
        .map_err(refused)
}

thread_local! {
    /// The read tokens this isolate checked. Requests interleave at awaits; no borrow
    /// is held across one, and `remember` never lets a late look-up undo a revocation.
    static READ_TOKENS: RefCell<ReadTokens> = RefCell::new(ReadTokens::default());
}

/// Admits a read of a private cache: a token with `read`, unexpired, unrevoked at a
/// lookup within `REVOCATION_CHECK_SECONDS`. A remembered token costs no R2 operation
/// and no signature check; the configuration is parsed only for a token not yet seen.
/// Or a CI's ID token with `read`, checked whole each time (configuration included).
/// Nothing here reads what the request names.
pub async fn admit_reader(req: &Request, env: &Env) -> Result<(), EdgeError> {
    let header = req.headers().get("Authorization")?;
    let text = reader::token_text(header.as_deref()).map_err(refused)?;
    let now_ms = worker::Date::now().as_millis();
    if looks_like_jwt(text.trim()) {
        // Checked whole each time (a WebCrypto verify; keys are kept per isolate).
        let config = super::config(env)?;
        return ci_identity(&config, req, &text, now_ms, Permissions::READ)
            .await
            .map(drop);
    }
    let digest = reader::digest(&text);
    let looked_up = READ_TOKENS.with(|tokens| tokens.borrow_mut().lookup(&digest, now_ms));
    let (token, recheck_ms) = match looked_up.map_err(refused)? {
        Lookup::Admitted => return Ok(()),
        Lookup::Recheck { token, recheck_ms } => (token, recheck_ms),
        Lookup::Unknown => {
            let config = super::config(env)?;
            let token = reader::check(&text, &config.token_keys, now_ms, Permissions::READ)
                .map_err(refused)?;
            (token, config.revocation_check_ms)
        }
    };
    let revocation = Route::Revocation(token.id).to_string();
    let revoked = super::bucket(env)?.head(&revocation).await?.is_some();
    READ_TOKENS
        .with(|tokens| {
            tokens
                .borrow_mut()
                .remember(digest, token, revoked, now_ms, recheck_ms)
        })
        .map_err(refused)
}

fn refused(refusal: TokenRefusal) -> EdgeError {
    let why = refusal.to_string();
    match refusal.status() {
        403 => EdgeError::Forbidden(why),
        503 => EdgeError::Busy(why),
        _ => EdgeError::Unauthorized(why),
    }
}
