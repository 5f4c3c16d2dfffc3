//! What the worker does with a request, decided from its method, its route and who may
//! read the cache ([`ReadAccess`]) alone: before a token is read or storage touched. The edge serves a [`Public`] plan at once and runs
//! a guarded [`Operation`] only after the token proved the permission it needs.

use thiserror::Error;

use crate::core::config::ReadAccess;
use crate::core::http::Method;
use crate::core::multipart::{Action, MultipartError};
use crate::core::nix::nar_file::NarFile;
use crate::core::pin_name::PinName;
use crate::core::route::Route;
use crate::core::token::{Permissions, TokenId};

/// What a request asks for, and whether it needs a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Anyone may: no token is read.
    Public(Public),
    /// A read of a private cache: served as the [`Public`] plan says once a token with
    /// `read` is admitted (`crate::core::reader`), and never stored in a shared cache.
    Private(Public),
    /// Only with a valid, unrevoked token that carries `needs`.
    Guarded {
        operation: Operation,
        needs: Permissions,
    },
}

/// What anyone may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Public {
    /// GET/HEAD of a stored file: R2 only, nothing else consulted.
    Serve,
    /// GET/HEAD of a file made from configuration (landing page, `nix-cache-info`,
    /// `public-keys`, `_nixflare/info`).
    Render,
}

/// What needs a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// GET/HEAD `_nixflare/whoami`: what the cache makes of the request's token (any
    /// valid token may ask).
    Whoami,
    /// PUT `nix-cache-info`: Nix sends one when it finds none. The worker's is
    /// configuration, so this succeeds and changes nothing.
    KeepCacheInfo,
    /// PUT of a protocol file, checked by kind before anything is stored.
    Store,
    /// PUT `_nixflare/revocations/<id>`.
    Revoke(TokenId),
    /// DELETE of a narinfo or NAR.
    Delete,
    /// A step of a multipart NAR upload, as its method and query say.
    Upload(NarFile, Action),
    /// POST `_nixflare/missing`: which of a batch of paths the cache lacks (any valid
    /// token: the index is never open to anonymous requests).
    QueryMissing,
    /// POST `_nixflare/narinfos`: a batch of narinfos, each published as a PUT would.
    PublishBatch,
    /// GET/HEAD `_nixflare/stats` (any valid token).
    Stats,
    /// GET/HEAD `_nixflare/metrics`: Prometheus text.
    Metrics,
    /// POST `_nixflare/reconcile`: one step of the reconcile pass.
    Reconcile,
    /// GET/HEAD `_nixflare/gc`: what a GC pass would remove, and why.
    GcPlan,
    /// POST `_nixflare/gc`: steps of a GC pass.
    GcRun,
    /// GET/HEAD `_nixflare/pins` (any valid token).
    ListPins,
    /// PUT `_nixflare/pins/<name>`: add or move a pin.
    SetPin(PinName),
    /// DELETE `_nixflare/pins/<name>`.
    RemovePin(PinName),
    /// POST `_nixflare/roots`: a push names its roots again.
    RefreshRoots,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    #[error("method not allowed here (allowed: {allow})")]
    MethodNotAllowed {
        /// The methods the route takes, for the 405's `Allow` header.
        allow: &'static str,
    },
    /// A multipart request whose query names no valid step.
    #[error(transparent)]
    Multipart(#[from] MultipartError),
}

/// Decides what a request asks for. `query` gives the decoded query parameters
/// ([`crate::core::http::query_pairs`]); only multipart requests read them.
///
/// In a private cache ([`ReadAccess::Token`]) everything that tells of the cache's
/// contents or configuration needs `read`: every stored file, `nix-cache-info`,
/// `public-keys`, `_nixflare/info`, and every guarded operation on top of its own
/// permission (writes answer whether what they name is there). What needs no `read`
/// tells nothing: the landing page (static), `whoami` (the caller's own token) and a
/// revocation (a token id).
pub fn plan(
    method: Method,
    route: &Route,
    access: ReadAccess,
    query: impl FnOnce() -> Vec<(String, String)>,
) -> Result<Plan, Refusal> {
    let plan = public_plan(method, route, query)?;
    Ok(match (access, plan) {
        (ReadAccess::Public, plan) => plan,
        (ReadAccess::Token, Plan::Public(public)) if *route == Route::LandingPage => {
            Plan::Public(public)
        }
        (ReadAccess::Token, Plan::Public(public)) => Plan::Private(public),
        // Whoami tells a token only about itself; a revocation names a token, not a path.
        (
            ReadAccess::Token,
            plan @ Plan::Guarded {
                operation: Operation::Whoami | Operation::Revoke(_),
                ..
            },
        ) => plan,
        // Every other operation tells of what the cache holds: which paths are there (a
        // PUT's "already stored", a multipart upload found present, a batch's answers),
        // their names, sizes and referrers (reconcile, GC plans, a refused delete, pins).
        (ReadAccess::Token, Plan::Guarded { operation, needs }) => Plan::Guarded {
            operation,
            needs: needs.union(Permissions::READ),
        },
        // `public_plan` never makes one.
        (ReadAccess::Token, plan @ Plan::Private(_)) => plan,
    })
}

/// What a request asks for in a public cache.
fn public_plan(
    method: Method,
    route: &Route,
    query: impl FnOnce() -> Vec<(String, String)>,
) -> Result<Plan, Refusal> {
    let guarded = |operation, needs| Ok(Plan::Guarded { operation, needs });
    let read = matches!(method, Method::Get | Method::Head);
    match (method, route) {
        (_, Route::LandingPage | Route::CacheInfo | Route::PublicKeys | Route::Info) if read => {
            Ok(Plan::Public(Public::Render))
        }
        (_, Route::Whoami) if read => guarded(Operation::Whoami, Permissions::NONE),
        (_, Route::Stats) if read => guarded(Operation::Stats, Permissions::NONE),
        (_, Route::Metrics) if read => guarded(Operation::Metrics, Permissions::METRICS),
        (Method::Post, Route::Missing) => guarded(Operation::QueryMissing, Permissions::NONE),
        (Method::Post, Route::Narinfos) => guarded(Operation::PublishBatch, Permissions::WRITE),
        (Method::Post, Route::Reconcile) => guarded(Operation::Reconcile, Permissions::WRITE),
        // A dry run marks (work on the one index): an operator's, like a pass.
        (_, Route::Gc) if read => guarded(Operation::GcPlan, Permissions::DELETE),
        (Method::Post, Route::Gc) => guarded(Operation::GcRun, Permissions::DELETE),
        (_, Route::Pins) if read => guarded(Operation::ListPins, Permissions::NONE),
        (Method::Put, Route::Pin(name)) => {
            guarded(Operation::SetPin(name.clone()), Permissions::PIN)
        }
        (Method::Delete, Route::Pin(name)) => {
            guarded(Operation::RemovePin(name.clone()), Permissions::PIN)
        }
        (Method::Post, Route::Roots) => guarded(Operation::RefreshRoots, Permissions::WRITE),
        (
            _,
            Route::Missing
            | Route::Narinfos
            | Route::Reconcile
            | Route::Gc
            | Route::Pins
            | Route::Pin(_)
            | Route::Roots
            | Route::Metrics,
        ) => Err(not_allowed(route)),
        (_, Route::Revocation(_) | Route::Upload(_)) if read => Err(not_allowed(route)),
        (_, _) if read => Ok(Plan::Public(Public::Serve)),
        (Method::Put, Route::CacheInfo) => guarded(Operation::KeepCacheInfo, Permissions::WRITE),
        (
            Method::Put,
            Route::Narinfo(_)
            | Route::Nar(_)
            | Route::Listing(_)
            | Route::Log(_)
            | Route::Realisation { .. }
            | Route::BuildTrace { .. }
            | Route::DebugInfo(_),
        ) => guarded(Operation::Store, Permissions::WRITE),
        (Method::Put, Route::Revocation(id)) => {
            guarded(Operation::Revoke(*id), Permissions::REVOKE)
        }
        (Method::Delete, Route::Narinfo(_) | Route::Nar(_)) => {
            guarded(Operation::Delete, Permissions::DELETE)
        }
        (Method::Post | Method::Put | Method::Delete, Route::Upload(nar)) => {
            let action = Action::parse(method, &query())?;
            guarded(Operation::Upload(*nar, action), Permissions::WRITE)
        }
        _ => Err(not_allowed(route)),
    }
}

fn not_allowed(route: &Route) -> Refusal {
    Refusal::MethodNotAllowed {
        allow: allowed_methods(route),
    }
}

/// The methods a route takes (a 405's `Allow`): what [`plan`] accepts, spelled out.
fn allowed_methods(route: &Route) -> &'static str {
    match route {
        Route::Narinfo(_) | Route::Nar(_) => "GET, HEAD, PUT, DELETE",
        Route::CacheInfo
        | Route::Listing(_)
        | Route::Log(_)
        | Route::Realisation { .. }
        | Route::BuildTrace { .. }
        | Route::DebugInfo(_) => "GET, HEAD, PUT",
        Route::LandingPage
        | Route::PublicKeys
        | Route::Info
        | Route::Whoami
        | Route::Stats
        | Route::Summary
        | Route::Metrics => "GET, HEAD",
        Route::Missing | Route::Narinfos | Route::Reconcile | Route::Roots => "POST",
        Route::Gc => "GET, HEAD, POST",
        Route::Pins => "GET, HEAD",
        Route::Pin(_) => "PUT, DELETE",
        Route::Revocation(_) => "PUT",
        Route::Upload(_) => "POST, PUT, DELETE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan in a public cache (the tests below, but for `private_cache_reads_need_read`).
    fn plan(
        method: Method,
        route: &Route,
        query: impl FnOnce() -> Vec<(String, String)>,
    ) -> Result<Plan, Refusal> {
        super::plan(method, route, ReadAccess::Public, query)
    }

    const HASH: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";
    const FILE_HASH: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const METHODS: [Method; 6] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Other,
    ];

    /// A query that makes any method a valid multipart step.
    fn query(method: Method) -> impl FnOnce() -> Vec<(String, String)> {
        move || {
            let id = format!("{}.u", "0a".repeat(16));
            let pairs: &[(&str, &str)] = match method {
                Method::Post => &[("uploads", "")],
                Method::Put => &[("uploadId", &id), ("partNumber", "1")],
                _ => &[("uploadId", &id)],
            };
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        }
    }

    fn routes() -> Vec<Route> {
        [
            "/".to_owned(),
            "/nix-cache-info".into(),
            "/public-keys".into(),
            format!("/{HASH}.narinfo"),
            format!("/{HASH}.ls"),
            format!("/nar/{FILE_HASH}.nar.xz"),
            format!("/log/{HASH}-hello.drv"),
            format!("/realisations/sha256:{}!out.doi", "e".repeat(64)),
            format!("/build-trace-v2/{HASH}-hello.drv/out.doi"),
            "/debuginfo/0123456789abcdef".into(),
            "/_nixflare/revocations/0123456789abcdef0123456789abcdef".into(),
            format!("/_nixflare/uploads/nar/{FILE_HASH}.nar.zst"),
            "/_nixflare/info".into(),
            "/_nixflare/whoami".into(),
            "/_nixflare/missing".into(),
            "/_nixflare/stats".into(),
            "/_nixflare/reconcile".into(),
            "/_nixflare/gc".into(),
            "/_nixflare/pins".into(),
            "/_nixflare/pins/release".into(),
            "/_nixflare/roots".into(),
        ]
        .iter()
        .map(|path| Route::parse(path).unwrap())
        .collect()
    }

    #[test]
    fn allow_lists_exactly_what_plan_accepts() {
        for route in routes() {
            let accepted: Vec<&str> = METHODS
                .into_iter()
                .filter(|&m| plan(m, &route, query(m)).is_ok())
                .map(Method::as_str)
                .collect();
            assert_eq!(accepted.join(", "), allowed_methods(&route), "{route}");
            for method in METHODS {
                if let Err(Refusal::MethodNotAllowed { allow }) =
                    plan(method, &route, query(method))
                {
                    assert_eq!(allow, allowed_methods(&route));
                }
            }
        }
    }

    #[test]
    fn reads_are_anonymous_and_writes_need_their_permission() {
        for route in routes() {
            for method in [Method::Get, Method::Head] {
                if let Ok(plan) = plan(method, &route, Vec::new) {
                    let public = matches!(plan, Plan::Public(_));
                    let guarded =
                        [Route::Whoami, Route::Stats, Route::Gc, Route::Pins].contains(&route);
                    assert_eq!(public, !guarded, "{route}");
                }
            }
            for method in [Method::Put, Method::Post, Method::Delete, Method::Other] {
                if let Ok(plan) = plan(method, &route, query(method)) {
                    assert!(matches!(plan, Plan::Guarded { .. }), "{method:?} {route}");
                }
            }
        }
        let guarded = |operation, needs| Ok(Plan::Guarded { operation, needs });
        let narinfo = Route::parse(&format!("/{HASH}.narinfo")).unwrap();
        assert_eq!(
            plan(Method::Put, &narinfo, Vec::new),
            guarded(Operation::Store, Permissions::WRITE)
        );
        assert_eq!(
            plan(Method::Delete, &narinfo, Vec::new),
            guarded(Operation::Delete, Permissions::DELETE)
        );
        let id = TokenId([1; 16]);
        assert_eq!(
            plan(Method::Put, &Route::Revocation(id), Vec::new),
            guarded(Operation::Revoke(id), Permissions::REVOKE)
        );
        assert_eq!(
            plan(Method::Get, &Route::Whoami, Vec::new),
            guarded(Operation::Whoami, Permissions::NONE)
        );
        assert_eq!(
            plan(Method::Head, &Route::Info, Vec::new),
            Ok(Plan::Public(Public::Render))
        );
        assert_eq!(
            plan(Method::Get, &narinfo, Vec::new),
            Ok(Plan::Public(Public::Serve))
        );
        assert_eq!(
            plan(Method::Post, &Route::Missing, Vec::new),
            guarded(Operation::QueryMissing, Permissions::NONE)
        );
        assert_eq!(
            plan(Method::Post, &Route::Reconcile, Vec::new),
            guarded(Operation::Reconcile, Permissions::WRITE)
        );
        assert_eq!(
            plan(Method::Put, &Route::CacheInfo, Vec::new),
            guarded(Operation::KeepCacheInfo, Permissions::WRITE)
        );
        // Multipart: the query decides the step, and a bad one is refused as such.
        let nar = crate::core::nix::nar_file::NarFile::parse(&format!("{FILE_HASH}.nar")).unwrap();
        let upload = Route::Upload(nar);
        assert_eq!(
            plan(Method::Post, &upload, query(Method::Post)),
            guarded(Operation::Upload(nar, Action::Create), Permissions::WRITE)
        );
        assert_eq!(
            plan(Method::Post, &upload, Vec::new),
            Err(Refusal::Multipart(MultipartError::Shape))
        );
        // Only an upload route reads the query at all.
        let untouched = || -> Vec<(String, String)> { panic!("query read") };
        assert!(plan(Method::Get, &narinfo, untouched).is_ok());
    }

    #[test]
    fn private_cache_reads_need_read() {
        for route in routes() {
            for method in METHODS {
                let public = plan(method, &route, query(method));
                let private = super::plan(method, &route, ReadAccess::Token, query(method));
                let expected = match public.clone() {
                    // The static page tells nothing of the cache.
                    Ok(Plan::Public(_)) if route == Route::LandingPage => public.clone(),
                    Ok(Plan::Public(p)) => Ok(Plan::Private(p)),
                    Ok(Plan::Guarded { operation, needs }) => {
                        let tells_nothing =
                            matches!(operation, Operation::Whoami | Operation::Revoke(_));
                        Ok(Plan::Guarded {
                            needs: if tells_nothing {
                                needs
                            } else {
                                needs.union(Permissions::READ)
                            },
                            operation,
                        })
                    }
                    other => other,
                };
                assert_eq!(private, expected, "{method:?} {route}");
                // Nothing a private cache answers is public but the page.
                if route != Route::LandingPage {
                    assert!(
                        !matches!(private, Ok(Plan::Public(_))),
                        "{method:?} {route} must not be public"
                    );
                }
            }
        }
        assert_eq!(
            super::plan(Method::Get, &Route::Whoami, ReadAccess::Token, Vec::new),
            Ok(Plan::Guarded {
                operation: Operation::Whoami,
                needs: Permissions::NONE
            })
        );
        assert_eq!(
            super::plan(Method::Get, &Route::CacheInfo, ReadAccess::Token, Vec::new),
            Ok(Plan::Private(Public::Render))
        );
    }

    /// The landing page's summary is a stored file anyone may read (a reader of a
    /// private cache), and nobody may write: the index writes it straight to R2.
    #[test]
    fn the_summary_is_read_like_a_stored_file_and_never_written() {
        use super::{plan, Plan, Public, ReadAccess, Refusal};
        assert_eq!(
            plan(Method::Get, &Route::Summary, ReadAccess::Public, Vec::new),
            Ok(Plan::Public(Public::Serve))
        );
        assert_eq!(
            plan(Method::Head, &Route::Summary, ReadAccess::Token, Vec::new),
            Ok(Plan::Private(Public::Serve))
        );
        for method in [Method::Put, Method::Post, Method::Delete] {
            assert_eq!(
                plan(method, &Route::Summary, ReadAccess::Public, Vec::new),
                Err(Refusal::MethodNotAllowed { allow: "GET, HEAD" })
            );
        }
    }
}
