//! The index's SQL interface: the one thing its logic needs from a database. The
//! Durable Object implements it with its `SqlStorage` (`crate::edge::index`); tests
//! implement it with SQLite itself (`rusqlite`, bundled), so every statement the
//! index runs in production runs natively under `cargo test`, unchanged.
//!
//! Statements are single SQL statements with `?`/`?N` parameters. Both engines are
//! SQLite, with JSON functions (`json_each`, `json_extract`), `RETURNING` and upserts.

use serde::de::DeserializeOwned;
use thiserror::Error;

/// A bound parameter. Integers are at most 2^53 - 1 (the Durable Object's bindings
/// travel as JavaScript numbers); [`integer`] saturates there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Integer(i64),
    Text(String),
}

/// The largest integer both engines carry exactly.
pub const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

pub fn integer(value: u64) -> Value {
    Value::Integer(value.min(MAX_EXACT_INTEGER) as i64)
}

pub fn text(value: impl ToString) -> Value {
    Value::Text(value.to_string())
}

pub fn optional(value: Option<u64>) -> Value {
    value.map_or(Value::Null, integer)
}

impl From<Option<String>> for Value {
    fn from(value: Option<String>) -> Self {
        value.map_or(Value::Null, Value::Text)
    }
}

/// A statement failed (or its rows did not have the shape asked for).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct SqlError(pub String);

pub trait Sql {
    /// Runs a statement; rows it returns are dropped.
    fn exec(&self, query: &str, params: &[Value]) -> Result<(), SqlError>;
    /// Runs a statement and reads its rows (columns by name) into `T`.
    fn rows<T: DeserializeOwned>(&self, query: &str, params: &[Value]) -> Result<Vec<T>, SqlError>;
    /// The database's size in bytes.
    fn size(&self) -> u64;
}
