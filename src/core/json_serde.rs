//! Typed reading of JSON with the strict reader ([`crate::core::json_read`]): a serde
//! `Deserializer` over its [`Value`]. Every JSON message the worker or the index reads
//! (request bodies, the index's answers, its own stored state) goes through here, so a
//! duplicate key, endless nesting or a fraction where a count belongs is refused with a
//! message that names it, the same on wasm and on the host.

use core::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use thiserror::Error;

use crate::core::json_read::{parse, JsonError, Value};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    #[error(transparent)]
    Json(#[from] JsonError),
    /// Valid JSON of the wrong shape (a missing field, a string for a number, ...).
    #[error("{0}")]
    Shape(String),
}

impl de::Error for ReadError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        ReadError::Shape(message.to_string())
    }
}

/// Reads a JSON document into `T`.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ReadError> {
    T::deserialize(parse(bytes)?)
}

pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, ReadError> {
    from_slice(text.as_bytes())
}

impl<'de> IntoDeserializer<'de, ReadError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = ReadError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(value) => visitor.visit_bool(value),
            Value::Number(Some(value)) => visitor.visit_u64(value),
            Value::Number(None) => Err(ReadError::Shape(
                "a number that is not a whole number from 0 to 2^64-1".into(),
            )),
            Value::String(text) => visitor.visit_string(text),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::<_, ReadError>::new(items.into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(entries) => {
                let mut map = MapDeserializer::<_, ReadError>::new(entries.into_iter());
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ReadError> {
        match self {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        visitor.visit_newtype_struct(self)
    }

    /// Unit variants are strings (`"sweep"`); others are not used by the messages.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ReadError> {
        match self {
            Value::String(text) => visitor.visit_enum(text.into_deserializer()),
            _ => Err(ReadError::Shape(
                "expected a string naming a variant".into(),
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::api::{GcPhase, PathQuery, PinRequest};

    #[test]
    fn reads_messages_and_names_what_is_wrong() {
        let query: PathQuery =
            from_str(r#"{"hashes":["7rjj86a15146cq1d3qy068lml7n8ykzm"]}"#).unwrap();
        assert_eq!(query.hashes.len(), 1);
        let pin: PinRequest =
            from_str(r#"{"storePath":"7rjj86a15146cq1d3qy068lml7n8ykzm-x","keepDays":null}"#)
                .unwrap();
        assert_eq!(pin.keep_days, None);
        assert_eq!(from_str::<GcPhase>(r#""sweep""#).unwrap(), GcPhase::Sweep);
        for (bad, why) in [
            (r#"{"hashes":[],"hashes":[]}"#, "twice"),
            ("5", "invalid type"),
            (r#"{"hashes":"x"}"#, "invalid type"),
            (r#"{}"#, "missing field `hashes`"),
            (r#"{"hashes":["x"]}"#, "expected 32"),
        ] {
            let err = from_str::<PathQuery>(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let deep = "[".repeat(300) + &"]".repeat(300);
        assert!(matches!(
            from_str::<Vec<u8>>(&deep),
            Err(ReadError::Json(JsonError::TooDeep))
        ));
        let err = from_str::<PinRequest>(
            r#"{"storePath":"7rjj86a15146cq1d3qy068lml7n8ykzm-x","keepDays":1.5}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
    }
}
