//! [`Sql`] on SQLite itself (rusqlite, bundled): the statements the Durable Object runs,
//! unchanged, with its quirks: parameters are bound as the object binds them (numbers
//! are JavaScript numbers, so REAL: an untyped column keeps `2.0`), and numbers read
//! back as the object's rows hand them over (a whole REAL reads as an integer).

use rusqlite::types::ValueRef;
use serde::de::DeserializeOwned;

use crate::core::index::sql::{Sql, SqlError, Value};

pub struct Sqlite(pub rusqlite::Connection);

impl Sqlite {
    pub fn memory() -> Self {
        Sqlite(rusqlite::Connection::open_in_memory().expect("an in-memory database"))
    }
}

fn params(values: &[Value]) -> Vec<rusqlite::types::Value> {
    values
        .iter()
        .map(|value| match value {
            Value::Null => rusqlite::types::Value::Null,
            Value::Integer(n) => rusqlite::types::Value::Real(*n as f64),
            Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        })
        .collect()
}

fn error(err: rusqlite::Error) -> SqlError {
    SqlError(err.to_string())
}

impl Sql for Sqlite {
    fn exec(&self, query: &str, values: &[Value]) -> Result<(), SqlError> {
        let mut statement = self.0.prepare(query).map_err(error)?;
        let mut rows = statement
            .query(rusqlite::params_from_iter(params(values)))
            .map_err(error)?;
        while rows.next().map_err(error)?.is_some() {}
        Ok(())
    }

    fn rows<T: DeserializeOwned>(&self, query: &str, values: &[Value]) -> Result<Vec<T>, SqlError> {
        let mut statement = self.0.prepare(query).map_err(error)?;
        let names: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params(values)))
            .map_err(error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(error)? {
            let mut object = serde_json::Map::new();
            for (i, name) in names.iter().enumerate() {
                let value = match row.get_ref(i).map_err(error)? {
                    ValueRef::Null => serde_json::Value::Null,
                    ValueRef::Integer(n) => serde_json::Value::from(n),
                    ValueRef::Real(f) if f.fract() == 0.0 && f.abs() < 9.007e15 => {
                        serde_json::Value::from(f as i64)
                    }
                    ValueRef::Real(f) => serde_json::Value::from(f),
                    ValueRef::Text(t) => {
                        serde_json::Value::from(String::from_utf8_lossy(t).into_owned())
                    }
                    ValueRef::Blob(_) => return Err(SqlError("a blob column".into())),
                };
                object.insert(name.clone(), value);
            }
            out.push(
                serde_json::from_value(serde_json::Value::Object(object))
                    .map_err(|err| SqlError(format!("row shape: {err}")))?,
            );
        }
        Ok(out)
    }

    fn size(&self) -> u64 {
        0
    }
}
