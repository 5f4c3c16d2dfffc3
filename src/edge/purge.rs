//! The edge cache (Workers Cache, `[cache]` in wrangler.toml) forgets what the worker
//! deletes or replaces: every stored file is served with its key as `Cache-Tag`, and
//! `ctx.cache.purge({ tags })` drops those tags everywhere.
//!
//! Where no purge happens, a stale copy lives as long as its Cache-Control says (a day
//! for a narinfo), and the GC holds what such a copy names (docs/gc.md):
//! - `wrangler dev` does not emulate Workers Cache;
//! - the cron's and the alarm's GC steps run inside the index's Durable Object (a Free
//!   cron has 10 ms of CPU; the object has 30 s). The runtime's other way to purge,
//!   `import { cache } from "cloudflare:workers"`, is scoped to the entrypoint that
//!   calls it: called from the object it would purge the object's cache, not the
//!   worker's responses. Purging from the cron itself (which is the worker's
//!   entrypoint) would need the keys the object deleted handed back to it, and the
//!   holds released after; not built: cron passes hold each lower layer a day.
//!
//! A private cache keeps nothing in Workers Cache; its copies in the Cache API
//! (`private.rs`) are forgotten here in this data centre only, so for the GC nothing
//! of a private cache is ever purged.

use js_sys::{Array, Function, Object, Promise, Reflect};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::console_error;

use super::private::{Place, PrivateCopies};
use crate::core::config::ReadAccess;
use crate::core::index::passes::EdgePurge;

/// Most tags one purge call names.
const TAGS_PER_PURGE: usize = 100;

pub struct EdgeCache {
    /// `ctx.cache` and its `purge`, when the runtime has them.
    purge: Option<(JsValue, Function)>,
    /// A private cache: nothing counts as purged.
    private: bool,
    /// Where its copies are, forgotten here too.
    private_copies: Option<Place>,
}

impl EdgeCache {
    pub fn of(
        ctx: &worker::Context,
        access: ReadAccess,
        req: &worker::Request,
        env: &worker::Env,
    ) -> Self {
        let private = access == ReadAccess::Token;
        let private_copies = private.then(|| Place::of(req, env).ok()).flatten();
        let context: &JsValue = ctx.as_ref();
        let purge = Reflect::get(context, &"cache".into())
            .ok()
            .filter(|cache| cache.is_object())
            .and_then(|cache| {
                let purge = Reflect::get(&cache, &"purge".into()).ok()?;
                Some((cache, purge.dyn_into::<Function>().ok()?))
            });
        Self {
            purge,
            private,
            private_copies,
        }
    }

    /// Keys just created: a private cache forgets the 404s it kept of them here (in
    /// other data centres such a copy lives out its minute, as a public cache's 404s
    /// do at the edge).
    pub async fn created(&self, keys: &[String]) {
        if let (Some(place), false) = (&self.private_copies, keys.is_empty()) {
            PrivateCopies::open(place).await.forget(keys).await;
        }
    }

    /// No purge available (a dry run).
    pub fn none() -> Self {
        Self {
            purge: None,
            private: false,
            private_copies: None,
        }
    }
}

impl EdgePurge for EdgeCache {
    /// Whether the runtime offers a purge here.
    fn purges(&self) -> bool {
        self.purge.is_some() && !self.private
    }

    /// Drops the keys' cached copies; failures are logged, never fatal (the copies
    /// expire on their own).
    async fn purge(&self, keys: &[String]) -> bool {
        if self.private {
            // Copies in other data centres live out their day: nothing counts as
            // purged, so the GC holds what they name as where nothing purges.
            if let Some(place) = &self.private_copies {
                PrivateCopies::open(place).await.forget(keys).await;
            }
            return false;
        }
        let Some((cache, purge)) = &self.purge else {
            return false;
        };
        let mut all = true;
        for chunk in keys.chunks(TAGS_PER_PURGE) {
            let tags: Array = chunk.iter().map(|key| JsValue::from_str(key)).collect();
            let options = Object::new();
            let _ = Reflect::set(&options, &"tags".into(), &tags);
            let called = purge
                .call1(cache, &options)
                .and_then(|promise| promise.dyn_into::<Promise>());
            let outcome = match called {
                Ok(promise) => JsFuture::from(promise).await.map(drop),
                Err(err) => Err(err),
            };
            if let Err(err) = outcome {
                console_error!("edge cache purge failed: {err:?}");
                all = false;
            }
        }
        all
    }
}
