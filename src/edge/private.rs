//! Copies a private cache keeps of its small files, so that a read stays cheap without
//! Workers Cache (which runs before the worker, and so before any token check).
//!
//! They live in a *named* Cache API cache (`caches.open`), reached only from code that
//! runs after `auth::admit_reader`:
//! - Workers Cache and the Cache API are independent stores (docs/platform.md §7): no
//!   request reaches a Cache API entry without the worker handing it out;
//! - a named cache is its own namespace, apart from `caches.default` and from what
//!   `fetch()` subrequests cache;
//! - the key is the file's canonical URL (query and headers dropped), so one copy
//!   serves every admitted reader and nothing about a request chooses another entry.
//!
//! The Cache API is per data centre and inert on `*.workers.dev` (reads then go to R2,
//! as for NARs); `wrangler dev` emulates it on disk.

use js_sys::Reflect;
use worker::{console_error, Cache, Env, Headers, Request, Response};

use super::error::EdgeError;
use crate::core::http::origin;
use crate::core::route::Route;

/// The binding of the worker's version metadata (`[version_metadata]` in wrangler.toml).
const VERSION_METADATA_BINDING: &str = "CF_VERSION_METADATA";

/// Where the copies of one deployment are: which cache, under which origin.
#[derive(Clone)]
pub struct Place {
    /// The named cache: one per deployed version, as Workers Cache has. A copy kept by
    /// an earlier private deployment is never served by a later one, so a cache that
    /// went public (where a delete counts as purged and its NAR may go early) and back
    /// starts afresh.
    name: String,
    /// `scheme://host[:port]` of the request: keys are full URLs.
    origin: String,
}

impl Place {
    pub fn of(req: &Request, env: &Env) -> Result<Self, EdgeError> {
        let version = Reflect::get(env.as_ref(), &VERSION_METADATA_BINDING.into())
            .ok()
            .and_then(|metadata| Reflect::get(&metadata, &"id".into()).ok())
            .and_then(|id| id.as_string())
            .unwrap_or_default();
        Ok(Self {
            name: format!("nixflare-private-{version}"),
            // Not `req.url()`: the url crate's IDNA tables would add ~85 KB gzip of wasm.
            origin: origin(&req.inner().url())
                .ok_or_else(|| EdgeError::BadRequest("the request has no origin".into()))?
                .to_owned(),
        })
    }
}

pub struct PrivateCopies {
    cache: Cache,
    origin: String,
}

impl PrivateCopies {
    pub async fn open(place: &Place) -> Self {
        Self {
            cache: Cache::open(place.name.clone()).await,
            origin: place.origin.clone(),
        }
    }

    /// The key of a storage key's copy. Store path names may hold `?` (and `=`): it is
    /// escaped, with `%` and `#`, so every key is a path of its own, never a query.
    fn url(&self, key: &str) -> String {
        let mut url = format!("{}/", self.origin);
        for c in key.chars() {
            match c {
                '%' => url.push_str("%25"),
                '?' => url.push_str("%3F"),
                '#' => url.push_str("%23"),
                c => url.push(c),
            }
        }
        url
    }

    /// The copy of `route`'s file, with headers of its own (a cached response's are
    /// immutable, and the worker sets Cache-Control on every private answer). A failing
    /// Cache API is a miss: R2 still answers.
    pub async fn get(&self, route: &Route) -> Option<Response> {
        let hit = match self.cache.get(self.url(&route.to_string()), false).await {
            Ok(hit) => hit?,
            Err(err) => {
                console_error!("private cache lookup failed: {err}");
                return None;
            }
        };
        let headers = Headers::new();
        for (name, value) in hit.headers().entries() {
            if headers.set(&name, &value).is_err() {
                return None;
            }
        }
        Some(hit.with_headers(headers))
    }

    /// Keeps a copy of `response` (`route`'s file, or its 404) for as long as its
    /// Cache-Control says; the body is teed by the runtime, never read into wasm.
    /// Returns the future that stores it, for `ctx.wait_until`.
    pub fn keep(
        self,
        route: &Route,
        response: &mut Response,
    ) -> Result<impl core::future::Future<Output = ()> + 'static, EdgeError> {
        let copy = response.cloned()?;
        let url = self.url(&route.to_string());
        Ok(async move {
            if let Err(err) = self.cache.put(url.as_str(), copy).await {
                console_error!("private cache put failed: {err}");
            }
        })
    }

    /// Forgets the copies of these storage keys (in this data centre: the Cache API has
    /// no global purge; elsewhere a copy lives out its day, as the GC allows).
    pub async fn forget(&self, keys: &[String]) {
        for key in keys {
            if let Err(err) = self.cache.delete(self.url(key).as_str(), false).await {
                console_error!("private cache delete failed: {err}");
            }
        }
    }
}
