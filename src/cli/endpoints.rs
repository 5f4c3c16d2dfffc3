//! One typed method per endpoint of a nixflare cache. Paths are the core's
//! [`Route`]s, multipart queries its [`Action`]s, answers its [`api`] messages: the
//! worker renders from the same definitions, so the two cannot drift apart.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::client::{Body, Client, HttpError, Reply};
use crate::core::api::{
    CacheInfo, GcProgress, GcRequest, NarinfoBatch, NarinfoResult, NarinfosPublished, PartUploaded,
    PathQuery, PathQueryAnswer, Pin, PinRequest, Pins, ReconcileStep, RootsRefreshed, Stats,
    UploadCompleted, UploadCreated, Whoami,
};
use crate::core::http::Method;
use crate::core::multipart::{render_part_list, Action, PartReceipt, UploadId};
use crate::core::nix::nar_file::NarFile;
use crate::core::nix::store_path::StorePathHash;
use crate::core::pin_name::PinName;
use crate::core::route::{Kind, Route};
use crate::core::token::TokenId;

/// What publishing a narinfo did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarinfoOutcome {
    Published,
    /// A different narinfo for the path was there first (409): the path is on the cache.
    AlreadyPublished,
}

/// Where a part's bytes come from: `length` bytes of `file` from `offset`.
pub struct FileRange<'a> {
    pub file: &'a Path,
    pub offset: u64,
    pub length: u64,
}

impl Client {
    /// `GET /_nixflare/info`: the first request to a cache, so its errors say whether
    /// the cache is reachable and is a nixflare cache at all.
    pub fn info(&self) -> Result<CacheInfo> {
        let path = Route::Info.to_string();
        let reply = self
            .send(Method::Get, &path, None, Body::Empty)
            .with_context(|| format!("cannot reach the cache at {}", self.base()))?;
        if matches!(reply.status, 401 | 403) {
            let refusal = HttpError::new(Method::Get, &path, &reply);
            bail!(
                "{} is a private cache: it needs a token with read permission (--token, \
                 NIXFLARE_TOKEN, --token-file, or the cache's host in a netrc file); {}",
                self.base(),
                refusal.reason
            );
        }
        if reply.status != 200 {
            bail!(
                "{} does not answer like a nixflare cache (GET /{path}: HTTP {})",
                self.base(),
                reply.status
            );
        }
        parse(&reply.body)
            .with_context(|| format!("the cache's /{path} is not what nixflare sends"))
    }

    /// `GET /_nixflare/whoami`: what the cache makes of our token.
    pub fn whoami(&self) -> Result<Whoami> {
        let (reply, answer) = self.whoami_answer()?;
        match answer {
            Some(whoami) => Ok(whoami),
            None => {
                let path = Route::Whoami.to_string();
                let refusal = HttpError::new(Method::Get, &path, &reply);
                bail!("the cache refused the upload token: {}", refusal.reason)
            }
        }
    }

    /// [`Self::whoami`], with a refusal (401, 403) as `None` rather than an error:
    /// whether a token still works, where the network failing is a different matter.
    pub fn whoami_if_accepted(&self) -> Result<Option<Whoami>> {
        let (reply, answer) = self.whoami_answer()?;
        match (reply.status, answer) {
            (_, Some(whoami)) => Ok(Some(whoami)),
            (401 | 403, None) => Ok(None),
            (status, None) => bail!("GET /{} answered {status}", Route::Whoami),
        }
    }

    fn whoami_answer(&self) -> Result<(Reply, Option<Whoami>)> {
        let path = Route::Whoami.to_string();
        let reply = self.send(Method::Get, &path, None, Body::Empty)?;
        if reply.status != 200 {
            return Ok((reply, None));
        }
        let whoami = parse(&reply.body)
            .with_context(|| format!("the cache's /{path} is not what nixflare sends"))?;
        Ok((reply, Some(whoami)))
    }

    pub fn has_narinfo(&self, hash: &StorePathHash) -> Result<bool> {
        self.exists(&Route::Narinfo(*hash).to_string())
    }

    pub fn has_nar(&self, nar: &NarFile) -> Result<bool> {
        self.exists(&Route::Nar(*nar).to_string())
    }

    /// A NAR in one request.
    pub fn put_nar(&self, nar: &NarFile, file: &Path, size: u64) -> Result<()> {
        let body = Body::FileRange {
            file,
            offset: 0,
            length: size,
        };
        let path = Route::Nar(*nar).to_string();
        self.expect_success(Method::Put, &path, Some(Kind::Nar.content_type()), body)?;
        Ok(())
    }

    pub fn put_narinfo(&self, hash: &StorePathHash, text: &str) -> Result<NarinfoOutcome> {
        let path = Route::Narinfo(*hash).to_string();
        let content_type = Some(Kind::Narinfo.content_type());
        match self.expect_success(
            Method::Put,
            &path,
            content_type,
            Body::Bytes(text.as_bytes()),
        ) {
            Ok(_) => Ok(NarinfoOutcome::Published),
            Err(err)
                if err
                    .downcast_ref::<HttpError>()
                    .is_some_and(|e| e.status == 409) =>
            {
                Ok(NarinfoOutcome::AlreadyPublished)
            }
            Err(err) => Err(err),
        }
    }

    /// POST `/_nixflare/narinfos`: a batch of narinfos, one result each, in order.
    pub fn publish_narinfos(&self, narinfos: &[String]) -> Result<Vec<NarinfoResult>> {
        let batch = NarinfoBatch {
            narinfos: narinfos.to_vec(),
        };
        let answer: NarinfosPublished = self
            .post_json(Route::Narinfos, &batch, "a batch of narinfos")?
            .context("the cache takes no batches of narinfos (an older worker?)")?;
        if answer.results.len() != narinfos.len() {
            bail!(
                "the cache answered {} results for {} narinfos",
                answer.results.len(),
                narinfos.len()
            );
        }
        Ok(answer.results)
    }

    pub fn create_upload(&self, nar: &NarFile) -> Result<UploadCreated> {
        let reply = self.upload_step(nar, &Action::Create, None, Body::Empty)?;
        parse(&reply.body)
            .context("the cache's answer to starting an upload is not what nixflare sends")
    }

    pub fn upload_part(
        &self,
        nar: &NarFile,
        id: &UploadId,
        number: u16,
        bytes: FileRange<'_>,
    ) -> Result<PartUploaded> {
        let action = Action::UploadPart {
            id: id.clone(),
            number,
        };
        let body = Body::FileRange {
            file: bytes.file,
            offset: bytes.offset,
            length: bytes.length,
        };
        let reply = self.upload_step(nar, &action, Some("application/octet-stream"), body)?;
        parse(&reply.body).context("the cache's part receipt is not what nixflare sends")
    }

    pub fn complete_upload(
        &self,
        nar: &NarFile,
        id: &UploadId,
        parts: &[PartReceipt],
    ) -> Result<UploadCompleted> {
        let list = render_part_list(parts);
        let action = Action::Complete { id: id.clone() };
        let reply = self.upload_step(
            nar,
            &action,
            Some("text/plain"),
            Body::Bytes(list.as_bytes()),
        )?;
        parse(&reply.body)
            .context("the cache's answer to completing an upload is not what nixflare sends")
    }

    /// POST `/_nixflare/missing`: which of `hashes` (at most
    /// [`MAX_QUERY_HASHES`](crate::core::index::MAX_QUERY_HASHES)) the cache lacks. `None`
    /// from a cache older than the index, which has no such endpoint.
    pub fn query_missing(&self, hashes: &[StorePathHash]) -> Result<Option<PathQueryAnswer>> {
        self.post_hashes(Route::Missing, hashes, "a path query")
    }

    /// POST `/_nixflare/roots`: these paths (at most
    /// [`MAX_QUERY_HASHES`](crate::core::index::MAX_QUERY_HASHES)) were pushed again now.
    /// `None` from a cache without retention.
    pub fn refresh_roots(&self, hashes: &[StorePathHash]) -> Result<Option<RootsRefreshed>> {
        self.post_hashes(Route::Roots, hashes, "a roots refresh")
    }

    /// POSTs a [`PathQuery`]; `None` where the cache has no such endpoint (404/405).
    fn post_hashes<T: serde::de::DeserializeOwned>(
        &self,
        route: Route,
        hashes: &[StorePathHash],
        what: &str,
    ) -> Result<Option<T>> {
        let query = PathQuery {
            hashes: hashes.to_vec(),
        };
        self.post_json(route, &query, what)
    }

    /// POSTs a JSON message; `None` where the cache has no such endpoint (404/405).
    fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        route: Route,
        message: &impl serde::Serialize,
        what: &str,
    ) -> Result<Option<T>> {
        let path = route.to_string();
        let body = serde_json::to_vec(message)?;
        let reply = self.send(
            Method::Post,
            &path,
            Some(Kind::Api.content_type()),
            Body::Bytes(&body),
        )?;
        match reply.status {
            200 => parse(&reply.body).map(Some).with_context(|| {
                format!("the cache's answer to {what} is not what nixflare sends")
            }),
            404 | 405 => Ok(None),
            _ => Err(HttpError::new(Method::Post, &path, &reply).into()),
        }
    }

    /// GET `/_nixflare/pins`.
    pub fn pins(&self) -> Result<Pins> {
        let path = Route::Pins.to_string();
        let reply = self.expect_success(Method::Get, &path, None, Body::Empty)?;
        parse(&reply.body).context("the cache's pins are not what nixflare sends")
    }

    /// PUT `/_nixflare/pins/<name>`.
    pub fn set_pin(&self, name: &PinName, request: &PinRequest) -> Result<Pin> {
        let path = Route::Pin(name.clone()).to_string();
        let body = serde_json::to_vec(request)?;
        let reply = self.expect_success(
            Method::Put,
            &path,
            Some(Kind::Api.content_type()),
            Body::Bytes(&body),
        )?;
        parse(&reply.body).context("the cache's pin is not what nixflare sends")
    }

    /// DELETE `/_nixflare/pins/<name>`.
    pub fn remove_pin(&self, name: &PinName) -> Result<()> {
        let path = Route::Pin(name.clone()).to_string();
        self.expect_success(Method::Delete, &path, None, Body::Empty)?;
        Ok(())
    }

    /// GET `/_nixflare/gc`: a dry run's progress, with the plan once marked.
    pub fn gc_plan(&self) -> Result<GcProgress> {
        let path = Route::Gc.to_string();
        let reply = self.expect_success(Method::Get, &path, None, Body::Empty)?;
        parse(&reply.body).context("the cache's GC plan is not what nixflare sends")
    }

    /// POST `/_nixflare/gc`: steps of a pass.
    pub fn gc_run(&self, start_up_to: u64) -> Result<GcProgress> {
        let path = Route::Gc.to_string();
        let body = serde_json::to_vec(&GcRequest { start_up_to })?;
        let reply = self.expect_success(
            Method::Post,
            &path,
            Some(Kind::Api.content_type()),
            Body::Bytes(&body),
        )?;
        parse(&reply.body).context("the cache's GC progress is not what nixflare sends")
    }

    /// GET `/_nixflare/stats`.
    pub fn stats(&self) -> Result<Stats> {
        let path = Route::Stats.to_string();
        let reply = self.expect_success(Method::Get, &path, None, Body::Empty)?;
        parse(&reply.body).context("the cache's stats are not what nixflare sends")
    }

    /// POST `/_nixflare/reconcile`: one step of the pass.
    pub fn reconcile_step(&self) -> Result<ReconcileStep> {
        let path = Route::Reconcile.to_string();
        let reply = self.expect_success(Method::Post, &path, None, Body::Empty)?;
        parse(&reply.body).context("the cache's reconcile step is not what nixflare sends")
    }

    /// Whether a binary cache (any, not only nixflare: an upstream such as
    /// cache.nixos.org) serves `hash`. 403 means absent too, as Nix reads it (S3).
    pub fn serves(&self, hash: &StorePathHash) -> Result<bool> {
        let path = Route::Narinfo(*hash).to_string();
        let reply = self.send(Method::Head, &path, None, Body::Empty)?;
        match reply.status {
            200 => Ok(true),
            403 | 404 | 410 => Ok(false),
            _ => Err(HttpError::new(Method::Head, &path, &reply).into()),
        }
    }

    /// PUT `/_nixflare/revocations/<id>`.
    pub fn revoke(&self, id: &TokenId) -> Result<()> {
        let path = Route::Revocation(*id).to_string();
        self.expect_success(Method::Put, &path, None, Body::Empty)?;
        Ok(())
    }

    fn upload_step(
        &self,
        nar: &NarFile,
        action: &Action,
        content_type: Option<&str>,
        body: Body<'_>,
    ) -> Result<super::client::Reply> {
        let path = format!("{}?{}", Route::Upload(*nar), encode_query(action));
        self.expect_success(action.method(), &path, content_type, body)
    }
}

/// A message of the wire contract, as the worker rendered it.
fn parse<'a, T: serde::Deserialize<'a>>(text: &'a str) -> serde_json::Result<T> {
    serde_json::from_str(text)
}

/// The action's query string (`name=value&…`), values percent-encoded.
fn encode_query(action: &Action) -> String {
    let pairs: Vec<String> = action
        .query()
        .into_iter()
        .map(|(name, value)| match value.is_empty() {
            true => name.to_owned(),
            false => format!("{name}={}", utf8_percent_encode(&value, NON_ALPHANUMERIC)),
        })
        .collect();
    pairs.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::http::query_pairs;

    #[test]
    fn queries_read_back_as_the_same_action_in_the_core() {
        let id = UploadId::new([7; 16], "AbC+/=x~%&?#").unwrap();
        for action in [
            Action::Create,
            Action::UploadPart {
                id: id.clone(),
                number: 7,
            },
            Action::Complete { id: id.clone() },
            Action::Abort { id: id.clone() },
        ] {
            let url = format!(
                "https://h/_nixflare/uploads/nar/x.nar?{}",
                encode_query(&action)
            );
            assert_eq!(
                Action::parse(action.method(), &query_pairs(&url)),
                Ok(action),
                "{url}"
            );
        }
    }
}
