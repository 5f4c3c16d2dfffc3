//! The worker's side of the index (`index.rs` is the Durable Object): one typed call per
//! operation, each a request to the one object.

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Env, Method, Request, RequestInit, Stub};

use super::error::EdgeError;
use super::json::from_json;
use crate::core::api;
use crate::core::api::RootsRefreshed;
use crate::core::index::{
    Adopt, Advance, Begin, Begun, Cursor, Finish, Forget, Forgot, GcStep, GcWork, OrphanPage,
    Orphans, PageChecked, PinRemoved, PinSet, Query, ReconcilePage, Refresh, RemovePin, SetPin,
    Swept, BINDING, OBJECT_NAME,
};

pub struct IndexClient {
    stub: Stub,
}

impl IndexClient {
    pub fn open(env: &Env) -> Result<Self, EdgeError> {
        let namespace = env.durable_object(BINDING).map_err(|_| {
            EdgeError::Index(format!(
                "the worker has no {BINDING} Durable Object binding (see wrangler.toml)"
            ))
        })?;
        Ok(Self {
            stub: namespace.get_by_name(OBJECT_NAME)?,
        })
    }

    /// Sends one operation; the object's answer as text.
    async fn call_text(&self, op: &str, body: &impl Serialize) -> Result<String, EdgeError> {
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(api::render(body).into()));
        let request = Request::new_with_init(&format!("https://index/{op}"), &init)?;
        let mut response = self
            .stub
            .fetch_with_request(request)
            .await
            .map_err(|err| EdgeError::Index(err.to_string()))?;
        let text = response.text().await?;
        if response.status_code() != 200 {
            return Err(EdgeError::Index(text));
        }
        Ok(text)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        op: &str,
        body: &impl Serialize,
    ) -> Result<T, EdgeError> {
        let text = self.call_text(op, body).await?;
        from_json(&text).map_err(|err| EdgeError::Index(format!("{op} answered {err}")))
    }

    pub async fn begin(&self, begin: &Begin) -> Result<Begun, EdgeError> {
        self.call("begin", begin).await
    }

    pub async fn commit(&self, finish: &Finish) -> Result<(), EdgeError> {
        self.call_text("commit", finish).await.map(drop)
    }

    pub async fn abort(&self, finish: &Finish) -> Result<(), EdgeError> {
        self.call_text("abort", finish).await.map(drop)
    }

    pub async fn forget(&self, forget: &Forget) -> Result<Forgot, EdgeError> {
        self.call("forget", forget).await
    }

    pub async fn forget_done(&self, forget: &Forget) -> Result<(), EdgeError> {
        self.call_text("forget/done", forget).await.map(drop)
    }

    /// The answer is an `api::PathQueryAnswer`, passed on as the object wrote it.
    pub async fn query(&self, query: &Query) -> Result<String, EdgeError> {
        self.call_text("query", query).await
    }

    /// An `api::Stats`, passed on as the object wrote it.
    pub async fn stats(&self) -> Result<String, EdgeError> {
        self.call_text("stats", &api::True).await
    }

    pub async fn adopt(&self, adopt: &Adopt) -> Result<(), EdgeError> {
        self.call_text("adopt", adopt).await.map(drop)
    }

    pub async fn cursor(&self) -> Result<Cursor, EdgeError> {
        self.call("reconcile/cursor", &api::True).await
    }

    pub async fn reconcile_page(&self, page: &ReconcilePage) -> Result<PageChecked, EdgeError> {
        self.call("reconcile/page", page).await
    }

    pub async fn advance(&self, advance: &Advance) -> Result<Cursor, EdgeError> {
        self.call("reconcile/advance", advance).await
    }

    pub async fn refresh(&self, refresh: &Refresh) -> Result<RootsRefreshed, EdgeError> {
        self.call("roots", refresh).await
    }

    /// An `api::Pins`, passed on as the object wrote it.
    pub async fn pins(&self) -> Result<String, EdgeError> {
        self.call_text("pins", &api::True).await
    }

    pub async fn set_pin(&self, set: &SetPin) -> Result<PinSet, EdgeError> {
        self.call("pins/set", set).await
    }

    pub async fn remove_pin(&self, remove: &RemovePin) -> Result<PinRemoved, EdgeError> {
        self.call("pins/remove", remove).await
    }

    pub async fn gc_step(&self, step: &GcStep) -> Result<GcWork, EdgeError> {
        self.call("gc/step", step).await
    }

    pub async fn gc_swept(&self, swept: &Swept) -> Result<(), EdgeError> {
        self.call_text("gc/swept", swept).await.map(drop)
    }

    pub async fn gc_orphans(&self, page: &OrphanPage) -> Result<Orphans, EdgeError> {
        self.call("gc/orphans", page).await
    }
}
