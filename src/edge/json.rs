//! JSON into Rust types in the worker: the runtime's `JSON.parse`, then serde over the
//! JS value (serde-wasm-bindgen, which workers-rs links already), so no JSON parser is
//! compiled into the wasm for the wire contract's requests and the index's answers.

use serde::de::DeserializeOwned;

pub fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let value = js_sys::JSON::parse(text).map_err(|_| "not valid JSON".to_owned())?;
    serde_wasm_bindgen::from_value(value).map_err(|err| err.to_string())
}
