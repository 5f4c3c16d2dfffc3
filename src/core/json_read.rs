//! A strict JSON reader for the side files the worker checks (realisations, NAR
//! listings, debuginfo pointers), small enough for the wasm: serde_json's reader, with
//! its float parsing, would cost the worker more than all these checks together.
//!
//! RFC 8259, read the way Nix's JSON library (nlohmann) and the client's `JSON.parse`
//! read it, and stricter where they differ or are lenient: a duplicate key, a lone
//! surrogate, a byte-order mark, anything after the value and nesting deeper than
//! [`MAX_DEPTH`] are refused, so a document this reader accepts means the same thing to
//! every reader. Numbers keep their text (nothing here needs floats).

use thiserror::Error;

/// Deepest nesting accepted. NAR listings nest one object per directory level and one
/// for `entries`; real trees stay far below this.
pub const MAX_DEPTH: usize = 256;

/// Most values in one document: an 8 MiB listing of small files holds about 560,000.
/// Bounds the tree the worker builds (~80 bytes a value) well inside its 128 MB.
pub const MAX_VALUES: usize = 600_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    #[error("not valid JSON at byte {0}")]
    Syntax(usize),
    #[error("JSON object has the key {0:?} twice")]
    DuplicateKey(String),
    #[error("JSON nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("JSON holds more than {MAX_VALUES} values")]
    TooManyValues,
}

/// A JSON value. Objects keep their keys in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number: its value when it is a whole number that fits a `u64`, else `None`
    /// (a fraction, an exponent, a sign or a huge number; nothing here needs those).
    Number(Option<u64>),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// A whole number without sign, fraction or exponent.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(value) => *value,
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(entries) => Some(entries),
            _ => None,
        }
    }
}

/// Parses one JSON document.
pub fn parse(text: &[u8]) -> Result<Value, JsonError> {
    let mut reader = Reader {
        text,
        at: 0,
        values: 0,
    };
    let value = reader.value(0)?;
    reader.skip_space();
    match reader.at == text.len() {
        true => Ok(value),
        false => Err(JsonError::Syntax(reader.at)),
    }
}

/// Refuses an object with a key twice: sorting the keys once keeps this O(n log n) for
/// an object of any size.
fn no_duplicate_keys(entries: Vec<(String, Value)>) -> Result<Vec<(String, Value)>, JsonError> {
    let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    match keys.windows(2).find(|pair| pair[0] == pair[1]) {
        Some(pair) => Err(JsonError::DuplicateKey(pair[0].to_owned())),
        None => Ok(entries),
    }
}

struct Reader<'a> {
    text: &'a [u8],
    at: usize,
    values: usize,
}

impl Reader<'_> {
    fn error(&self) -> JsonError {
        JsonError::Syntax(self.at)
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), JsonError> {
        self.skip_space();
        match self.peek() == Some(byte) {
            true => {
                self.at += 1;
                Ok(())
            }
            false => Err(self.error()),
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, JsonError> {
        match self.text.get(self.at..self.at + word.len()) == Some(word) {
            true => {
                self.at += word.len();
                Ok(value)
            }
            false => Err(self.error()),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(JsonError::TooManyValues);
        }
        self.skip_space();
        match self.peek().ok_or_else(|| self.error())? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(Value::String),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(self.error()),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.at += 1;
        let mut entries: Vec<(String, Value)> = Vec::new();
        self.skip_space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Value::Object(entries));
        }
        loop {
            self.skip_space();
            if self.peek() != Some(b'"') {
                return Err(self.error());
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            entries.push((key, value));
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return no_duplicate_keys(entries).map(Value::Object);
                }
                _ => return Err(self.error()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.at += 1;
        let mut items = Vec::new();
        self.skip_space();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error()),
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error()),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.require_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.require_digits()?;
        }
        let text = core::str::from_utf8(&self.text[start..self.at]).map_err(|_| self.error())?;
        let whole = text.bytes().all(|b| b.is_ascii_digit());
        Ok(Value::Number(whole.then(|| text.parse().ok()).flatten()))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn require_digits(&mut self) -> Result<(), JsonError> {
        let start = self.at;
        self.digits();
        match self.at > start {
            true => Ok(()),
            false => Err(self.error()),
        }
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.at += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            let byte = self.peek().ok_or_else(|| self.error())?;
            self.at += 1;
            match byte {
                b'"' => return String::from_utf8(out).map_err(|_| self.error()),
                b'\\' => self.escape(&mut out)?,
                0x00..=0x1f => return Err(JsonError::Syntax(self.at - 1)),
                _ => out.push(byte),
            }
        }
    }

    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), JsonError> {
        let byte = self.peek().ok_or_else(|| self.error())?;
        self.at += 1;
        let simple = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let c = self.unicode_escape()?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            _ => return Err(self.error()),
        };
        out.push(simple);
        Ok(())
    }

    /// `\uXXXX`, a surrogate pair as two of them; a lone surrogate is refused.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                if self.text.get(self.at..self.at + 2) != Some(b"\\u") {
                    return Err(self.error());
                }
                self.at += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(self.error());
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            0xdc00..=0xdfff => return Err(self.error()),
            other => other,
        };
        char::from_u32(code).ok_or_else(|| self.error())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.error())?;
        let text = core::str::from_utf8(digits).map_err(|_| self.error())?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error());
        }
        self.at += 4;
        u32::from_str_radix(text, 16).map_err(|_| self.error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tree as serde_json reads, for documents both accept.
    fn same_as_serde(text: &str) {
        let ours = parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(to_serde(&ours), without_other_numbers(theirs), "{text}");
    }

    /// Numbers that are not whole `u64`s, as this reader keeps them: as no value.
    fn without_other_numbers(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Number(n)
                if n.as_u64().is_none() || n.to_string().contains(['.', 'e', 'E', '-']) =>
            {
                serde_json::Value::Null
            }
            serde_json::Value::Array(items) => {
                items.into_iter().map(without_other_numbers).collect()
            }
            serde_json::Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| (k, without_other_numbers(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            other => other,
        }
    }

    fn to_serde(value: &Value) -> serde_json::Value {
        match value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(Some(n)) => serde_json::Value::from(*n),
            Value::Number(None) => serde_json::Value::Null, // compared separately below
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(items) => items.iter().map(to_serde).collect(),
            Value::Object(entries) => entries
                .iter()
                .map(|(k, v)| (k.clone(), to_serde(v)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            "null",
            " true ",
            "[false, null, 0, -0, 12, -3.5e+2, 1E-7]",
            r#"{"a":{"b":[{}, []]},"c":"x"}"#,
            r#""escapes \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 \u0000""#,
            "\"UTF-8 é ☃ 😀\"",
            r#"{"dependentRealisations":{},"id":"sha256:41!out","outPath":"x","signatures":[]}"#,
        ] {
            same_as_serde(text);
        }
    }

    #[test]
    fn refuses_what_readers_could_read_differently() {
        for text in [
            "",
            " ",
            "nul",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\" 1}",
            "[1] [2]",
            "\"tab\tinside\"",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud800\\u0041\"",
            "\u{feff}{}",
            "\"unterminated",
            "'single'",
        ] {
            assert!(parse(text.as_bytes()).is_err(), "{text:?}");
        }
        assert_eq!(
            parse(br#"{"a":1,"a":2}"#),
            Err(JsonError::DuplicateKey("a".into()))
        );
        assert!(parse(b"\"\xff\"").is_err());
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert_eq!(parse(deep.as_bytes()), Err(JsonError::TooDeep));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let many = format!("[{}0]", "0,".repeat(MAX_VALUES));
        assert_eq!(parse(many.as_bytes()), Err(JsonError::TooManyValues));
    }

    #[test]
    fn a_huge_object_is_checked_for_duplicates_quickly() {
        // 200,000 keys: pairwise checking takes 2e10 comparisons, sorting a few million.
        let keys: Vec<String> = (0..200_000).map(|i| format!("\"k{i}\":0")).collect();
        let object = format!("{{{}}}", keys.join(","));
        assert!(parse(object.as_bytes()).is_ok());
        let duplicated = format!("{{{},\"k7\":1}}", keys.join(","));
        assert_eq!(
            parse(duplicated.as_bytes()),
            Err(JsonError::DuplicateKey("k7".into()))
        );
    }

    #[test]
    fn accessors() {
        let value = parse(br#"{"n":42,"f":1.5,"s":"x","o":{}}"#).unwrap();
        assert_eq!(value.get("n").and_then(Value::as_u64), Some(42));
        assert_eq!(value.get("f").and_then(Value::as_u64), None);
        assert_eq!(value.get("s").and_then(Value::as_str), Some("x"));
        assert_eq!(value.get("o").and_then(Value::as_object), Some(&[][..]));
        assert_eq!(value.get("missing"), None);
    }
}
