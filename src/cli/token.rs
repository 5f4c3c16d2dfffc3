//! `nixflare token mint|inspect|revoke`. Minting needs the admin key, inspecting needs
//! nothing, revoking asks the cache (with a token that has `revoke` permission).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};

use super::client::Client;
use super::keygen::read_secret_key;
use crate::core::nix::keys::SecretKey;
use crate::core::oidc::{jwt, rules};
use crate::core::token::{self, Claims, Permissions, TokenId};

pub fn now_unix() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

/// `90d`, `12h`, `30m`, `45s`.
pub fn parse_duration(text: &str) -> Result<u64> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("duration {text:?} needs a unit: s, m, h or d (e.g. 90d)"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow!("duration {text:?} is not a number with a unit (e.g. 90d)"))?;
    n.checked_mul(scale)
        .ok_or_else(|| anyhow!("duration {text:?} is too long"))
}

pub fn mint(key: &Path, subject: String, permissions: &str, expires_at: u64) -> Result<()> {
    let key = read_secret_key(key)?;
    let permissions = Permissions::parse_list(permissions)?;
    let (token, claims) = new_token(&key, subject, permissions, expires_at)?;
    println!("{token}");
    eprintln!(
        "token {} for {:?} ({}), expires at {} (Unix seconds)",
        claims.id, claims.subject, claims.permissions, claims.expires_at
    );
    Ok(())
}

/// A token signed by the admin key `key`, with a fresh random id.
pub fn new_token(
    key: &SecretKey,
    subject: String,
    permissions: Permissions,
    expires_at: u64,
) -> Result<(String, Claims)> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| anyhow!("no randomness for the token id: {e}"))?;
    let claims = Claims {
        id: TokenId(id),
        subject,
        permissions,
        expires_at,
    };
    let token = claims.mint(key).context("minting token")?;
    Ok((token, claims))
}

fn read_token_arg(token: &str) -> Result<String> {
    Ok(if token == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the token from stdin")?
    } else {
        token.to_owned()
    })
}

pub fn inspect(token: &str) -> Result<()> {
    let text = read_token_arg(token)?;
    if jwt::looks_like_jwt(text.trim()) {
        return inspect_id_token(text.trim());
    }
    let claims = token::decode_unverified(&text).context("not a nixflare token")?;
    println!("id: {}", claims.id);
    println!("subject: {}", claims.subject);
    println!("permissions: {}", claims.permissions);
    println!("expires_at: {}", claims.expires_at);
    let state = match now_unix()? >= claims.expires_at {
        true => "expired",
        false => "not expired",
    };
    eprintln!("({state}; the signature is checked only by the cache)");
    Ok(())
}

/// A CI provider's ID token as `OIDC_RULES` sees it: what its rules match against, and
/// the subject the cache records (say, to write a rule for a job: print the token in
/// the job, never in a public log, and inspect it).
fn inspect_id_token(text: &str) -> Result<()> {
    let token = jwt::parse(text).context("not an ID token the cache would take")?;
    let claims = &token.claims;
    println!("issuer: {}", claims.iss);
    println!("audience: {}", claims.aud.join(" "));
    println!("subject (the cache records): {}", rules::subject(claims));
    println!("algorithm: {} (key {:?})", token.alg.name(), token.kid);
    println!("issued_at: {}", claims.iat);
    println!("expires_at: {}", claims.exp);
    println!("claims rules may match:");
    println!("  sub: {}", claims.sub);
    for (name, value) in &claims.other {
        println!("  {name}: {value}");
    }
    let state = match claims.check_times(now_unix()?) {
        Ok(()) => "in its time".to_owned(),
        Err(why) => why.to_string(),
    };
    eprintln!("({state}; the signature is checked only by the cache)");
    Ok(())
}

/// Revokes `target` (a token, or its 32-hex id) on the cache `client` talks to with a
/// token that may revoke.
pub fn revoke(client: &Client, target: &str) -> Result<()> {
    let target = read_token_arg(target)?;
    let target = target.trim();
    let id: TokenId = match target.parse() {
        Ok(id) => id,
        Err(_) => {
            token::decode_unverified(target)
                .context("expected a token or a 32-hex token id")?
                .id
        }
    };
    client
        .revoke(&id)
        .with_context(|| format!("revoking token {id} on {}", client.base()))?;
    eprintln!("revoked token {id} on {}", client.base());
    Ok(())
}
