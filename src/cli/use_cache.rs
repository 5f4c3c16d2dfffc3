//! `nixflare use URL`: the configuration lines a user needs to read from (and push to)
//! a cache, with its public keys fetched from the cache itself.

use anyhow::{bail, Result};

use super::auth::host_of;
use super::client::Client;

pub fn run(cache: &str, attempts: u32) -> Result<()> {
    let client = Client::new(cache, None, attempts);
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
    println!("# nix.conf (/etc/nix/nix.conf, or ~/.config/nix/nix.conf for a trusted user)");
    println!("extra-substituters = {url}");
    println!("extra-trusted-public-keys = {keys}");
    println!();
    println!("# flake.nix");
    println!("nixConfig = {{");
    println!("  extra-substituters = [ \"{url}\" ];");
    println!("  extra-trusted-public-keys = [ {} ];", quoted.join(" "));
    println!("}};");
    println!();
    println!("# netrc (only to push with stock `nix copy`; reading needs no token)");
    println!("machine {} password <TOKEN>", host_of(url)?);
    Ok(())
}
