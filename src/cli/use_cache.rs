//! `nixflare use URL`: the configuration lines a user needs to read from (and push to)
//! a cache, with its public keys fetched from the cache itself; for a private cache,
//! the netrc line Nix reads it with.

use anyhow::{bail, Result};

use super::auth::host_of;
use super::client::Client;
use crate::core::config::ReadAccess;
use crate::core::token::{self, Permissions};

/// `token_file`: where the token is kept, printed in its place (output that may land in
/// a CI log never shows it).
pub fn run(
    cache: &str,
    token: Option<String>,
    attempts: u32,
    token_file: Option<&std::path::Path>,
) -> Result<()> {
    let client = Client::new(cache, token.clone(), attempts);
    let info = client.info()?;
    if info.public_keys.is_empty() {
        bail!("the cache lists no public keys: set PUBLIC_KEYS on the worker first");
    }
    let url = client.base();
    let keys: Vec<String> = info.public_keys.iter().map(|k| k.to_string()).collect();
    let keys = keys.join(" ");
    let quoted: Vec<String> = info
        .public_keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect();
    let host = host_of(url)?;
    let private = info.read_access == ReadAccess::Token;
    println!("# nix.conf (/etc/nix/nix.conf, or ~/.config/nix/nix.conf for a trusted user)");
    println!("extra-substituters = {url}");
    println!("extra-trusted-public-keys = {keys}");
    if private {
        println!("netrc-file = /etc/nix/netrc");
    }
    println!();
    println!("# flake.nix");
    println!("nixConfig = {{");
    println!("  extra-substituters = [ \"{url}\" ];");
    println!("  extra-trusted-public-keys = [ {} ];", quoted.join(" "));
    println!("}};");
    println!();
    if !private {
        println!("# netrc (only to push with stock `nix copy`; reading needs no token)");
        println!("machine {host} password <TOKEN>");
        return Ok(());
    }
    // The cache answered `info`, which a private cache gives only to a token with read.
    let token = token.unwrap_or_default();
    if let Ok(claims) = token::decode_unverified(&token) {
        if claims.permissions != Permissions::READ {
            eprintln!(
                "warning: this token can {}: machines that only substitute need a token \
                 with read alone (nixflare token mint --permissions read)",
                claims.permissions
            );
        }
    }
    println!();
    println!("# /etc/nix/netrc (root-owned, mode 0600): this cache is private, and Nix reads");
    println!("# it with a token that has read permission. The Nix daemon downloads, so the");
    println!("# line goes in the daemon's netrc-file, not in your own ~/.netrc.");
    match token_file {
        Some(file) => println!(
            "machine {host} login nixflare password <the token in {}>",
            file.display()
        ),
        None => println!("machine {host} login nixflare password {token}"),
    }
    Ok(())
}
