//! Tokens at the edge: the core parses and verifies them (`crate::core::token`); the edge
//! adds the one thing that needs storage, the revocation check.

use worker::{Bucket, Env, Request};

use super::error::EdgeError;
use super::index_client::IndexClient;
use crate::core::config::CacheConfig;
use crate::core::route::Route;
use crate::core::token::{self, Permissions, VerifiedToken};

/// What a guarded operation works with: the configuration, the bucket, and a token that
/// passed every check for the permission the operation needs.
pub struct Guarded {
    pub config: CacheConfig,
    pub bucket: Bucket,
    pub token: VerifiedToken,
    env: Env,
}

impl Guarded {
    pub async fn open(req: &Request, env: &Env, needs: Permissions) -> Result<Guarded, EdgeError> {
        let config = super::config(env)?;
        let bucket = super::bucket(env)?;
        let token = authorize(req, &config, &bucket, needs).await?;
        Ok(Guarded {
            config,
            bucket,
            token,
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
        self.token.permissions.contains(Permissions::WRITE)
    }

    /// Now, in Unix milliseconds, as the index records it (`TEST_CLOCK_OFFSET_SECONDS`
    /// added).
    pub fn now_ms(&self) -> u64 {
        self.config.clock_ms(worker::Date::now().as_millis())
    }
}

/// Checks the token: present, well-formed, signed by a token key, unexpired, carrying
/// `needs`, and not revoked (one R2 HEAD).
async fn authorize(
    req: &Request,
    config: &CacheConfig,
    bucket: &Bucket,
    needs: Permissions,
) -> Result<VerifiedToken, EdgeError> {
    let header = req.headers().get("Authorization")?.ok_or_else(|| {
        EdgeError::Unauthorized(
            "a token is required (Authorization: Bearer TOKEN, or the token as netrc password)"
                .into(),
        )
    })?;
    let text = token::from_authorization(&header)
        .ok_or_else(|| EdgeError::Unauthorized("Authorization must be Bearer or Basic".into()))?;
    let now = worker::Date::now().as_millis() / 1000;
    let token = token::verify(&text, &config.token_keys, now)
        .map_err(|e| EdgeError::Unauthorized(e.to_string()))?;
    if !token.permissions.contains(needs) {
        return Err(EdgeError::Forbidden(format!(
            "token for {:?} lacks {needs} permission",
            token.subject
        )));
    }
    let revocation = Route::Revocation(token.id).to_string();
    if bucket.head(&revocation).await?.is_some() {
        return Err(EdgeError::Unauthorized(format!(
            "token {} is revoked",
            token.id
        )));
    }
    Ok(token)
}
