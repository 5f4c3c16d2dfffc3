//! The upstream caches (`UPSTREAM_CACHES`) as the publish procedure asks them
//! (`crate::core::index::passes::Upstreams`): one narinfo HEAD per cache, in order,
//! until one has it; all references at once.

use futures_util::future::join_all;
use worker::{Fetch, Method, Request, RequestInit, RequestRedirect};

use crate::core::index::passes::{Found, Upstreams};
use crate::core::nix::store_path::StorePathHash;

pub struct Http;

impl Upstreams for Http {
    async fn lookup(&self, caches: &[String], hashes: &[StorePathHash]) -> Vec<Found> {
        join_all(hashes.iter().map(|hash| in_upstreams(caches, *hash))).await
    }
}

async fn in_upstreams(caches: &[String], hash: StorePathHash) -> Found {
    let mut unreachable = None;
    for cache in caches {
        let url = format!("{cache}/{hash}.narinfo");
        let mut init = RequestInit::new();
        // A redirect is not an answer (and following one costs another subrequest).
        init.with_method(Method::Head)
            .with_redirect(RequestRedirect::Manual);
        let answer = match Request::new_with_init(&url, &init) {
            Ok(request) => Fetch::Request(request).send().await,
            Err(err) => Err(err),
        };
        match answer.map(|r| r.status_code()) {
            Ok(200) => return Found::In(cache.clone()),
            // What Nix itself takes for "not there".
            Ok(404 | 403 | 410) => {}
            Ok(status @ 300..=399) => {
                unreachable = Some(format!("{url} redirects (HTTP {status}): not followed"))
            }
            Ok(status) => unreachable = Some(format!("{url} answered HTTP {status}")),
            Err(err) => unreachable = Some(format!("{url}: {err}")),
        }
    }
    unreachable.map_or(Found::Absent, Found::Unreachable)
}
