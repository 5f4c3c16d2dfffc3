//! Undoes a `Content-Encoding` on small uploads (narinfo, JSON side files) with the
//! runtime's own DecompressionStream, so no decompressor ships in the wasm. Nix >= 2.32
//! compresses these when `narinfo-compression` / `ls-compression` are set.
//!
//! Decoded bytes are read chunk by chunk and the read stops at `limit`: a small gzip
//! bomb cannot make the isolate inflate gigabytes.

use futures_util::StreamExt as _;
use wasm_bindgen::prelude::*;
use web_sys::ReadableWritablePair;
use worker::{Response, ResponseBody};

use super::error::EdgeError;

// web-sys gates DecompressionStream behind `web_sys_unstable_apis`; these three members
// are all that is needed.
#[wasm_bindgen]
extern "C" {
    type DecompressionStream;
    #[wasm_bindgen(constructor, catch)]
    fn new(format: &str) -> Result<DecompressionStream, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn readable(this: &DecompressionStream) -> web_sys::ReadableStream;
    #[wasm_bindgen(method, getter)]
    fn writable(this: &DecompressionStream) -> web_sys::WritableStream;
}

/// What the runtime can decode; anything else is a 415.
fn format(encoding: &str) -> Option<&'static str> {
    match encoding.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Some("gzip"),
        "deflate" => Some("deflate"),
        _ => None,
    }
}

pub async fn decode(mut bytes: Vec<u8>, encoding: &str, limit: u64) -> Result<Vec<u8>, EdgeError> {
    let format = format(encoding).ok_or_else(|| {
        EdgeError::UnsupportedEncoding(format!(
            "Content-Encoding {encoding:?} (gzip and deflate are decoded; upload others uncompressed)"
        ))
    })?;
    let js = |what: &str| EdgeError::BadRequest(format!("cannot decode the body: {what}"));
    let decompressor = DecompressionStream::new(format).map_err(|_| js("no decompressor"))?;
    let source = web_sys::Response::new_with_opt_u8_array(Some(&mut bytes))
        .map_err(|_| js("no body"))?
        .body()
        .ok_or_else(|| js("no body"))?;
    let pair = ReadableWritablePair::new(&decompressor.readable(), &decompressor.writable());
    let mut decoded =
        Response::from_body(ResponseBody::Stream(source.pipe_through(&pair)))?.stream()?;
    let mut out = Vec::new();
    while let Some(chunk) = decoded.next().await {
        let chunk =
            chunk.map_err(|_| EdgeError::BadRequest(format!("body is not valid {encoding}")))?;
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(EdgeError::TooLarge(format!(
                "decodes to over {limit} bytes"
            )));
        }
    }
    Ok(out)
}
