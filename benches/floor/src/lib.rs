//! The benchmark's wasm floor: the baseline worker's job (path = R2 key, body passed
//! through) written with workers-rs, nothing else.

use worker::{event, Context, Env, Error, Request, Response, Result};

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let path = req.path();
    let key = path.strip_prefix('/').unwrap_or(&path);
    let bucket = env.bucket("BUCKET")?;
    match bucket.get(key).execute().await? {
        Some(object) => {
            let body = object
                .body()
                .ok_or_else(|| Error::RustError("no body".into()))?;
            Response::from_body(body.response_body()?)
        }
        None => Response::error("not found", 404),
    }
}
