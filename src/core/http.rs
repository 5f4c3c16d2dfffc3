//! HTTP semantics the worker needs, without I/O: methods, `Range` (RFC 9110 §14),
//! `If-None-Match` (§13.1.2) and query strings.
//!
//! Only single byte ranges are served as 206: that is what download resumption
//! (curl, Nix) sends. Anything else is answered with the whole object, which RFC 9110
//! allows for a Range header the server chooses to ignore.

/// The request methods the cache tells apart; anything else is `Other` (a 405).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Other,
}

impl Method {
    pub fn parse(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// What to answer for a `Range` header, given the object's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: answer 200 with the whole object.
    Full,
    /// Answer 206 with bytes `start..=end` (inclusive, as in Content-Range).
    Partial { start: u64, end: u64 },
    /// Answer 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

impl RangeRequest {
    /// Resolves a `Range` header value against an object of `size` bytes.
    pub fn resolve(header: Option<&str>, size: u64) -> RangeRequest {
        let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
            return RangeRequest::Full;
        };
        if spec.contains(',') {
            return RangeRequest::Full;
        }
        let Some((first, last)) = spec.trim().split_once('-') else {
            return RangeRequest::Full;
        };
        let (first, last) = (first.trim(), last.trim());
        let parse = |s: &str| -> Option<u64> {
            // u64::from_str accepts a leading '+'; RFC digits do not.
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        if first.is_empty() {
            // Suffix range: the last N bytes.
            return match parse(last) {
                None => RangeRequest::Full,
                Some(0) => RangeRequest::Unsatisfiable,
                Some(_) if size == 0 => RangeRequest::Unsatisfiable,
                Some(n) => RangeRequest::Partial {
                    start: size.saturating_sub(n),
                    end: size - 1,
                },
            };
        }
        let Some(start) = parse(first) else {
            return RangeRequest::Full;
        };
        let end = if last.is_empty() {
            None
        } else {
            match parse(last) {
                Some(end) if end >= start => Some(end),
                // A range with last < first is invalid syntax: ignore it.
                _ => return RangeRequest::Full,
            }
        };
        if start >= size {
            return RangeRequest::Unsatisfiable;
        }
        let end = end.map_or(size - 1, |end| end.min(size - 1));
        RangeRequest::Partial { start, end }
    }
}

/// `Content-Range` value for a 206.
pub fn content_range(start: u64, end: u64, size: u64) -> String {
    format!("bytes {start}-{end}/{size}")
}

/// `Content-Range` value for a 416.
pub fn unsatisfied_range(size: u64) -> String {
    format!("bytes */{size}")
}

/// True when an `If-None-Match` header matches `etag` (a quoted entity tag), using
/// the weak comparison RFC 9110 prescribes for this header.
pub fn if_none_match_matches(header: &str, etag: &str) -> bool {
    let opaque = |tag: &str| {
        let tag = tag.trim();
        tag.strip_prefix("W/").unwrap_or(tag).to_owned()
    };
    let wanted = opaque(etag);
    header
        .split(',')
        .any(|candidate| candidate.trim() == "*" || opaque(candidate) == wanted)
}

/// The query parameters of a URL, `application/x-www-form-urlencoded` style (`+` is a
/// space, `%XX` a byte). Malformed escapes and non-UTF-8 values are dropped. Written
/// here rather than parsing the whole URL: a URL parser brings IDNA tables that
/// nearly double the wasm.
pub fn query_pairs(url: &str) -> Vec<(String, String)> {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((form_decode(name)?, form_decode(value)?))
        })
        .collect()
}

fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = core::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The origin of an absolute URL, `scheme://host[:port]`, as the runtime hands a
/// request's URL over; `None` for anything else. Written here for the reason
/// [`query_pairs`] is.
pub fn origin(url: &str) -> Option<&str> {
    let after_scheme = url.find("://")? + 3;
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    (end > after_scheme).then(|| &url[..end])
}

/// An HTTP date (RFC 9110 IMF-fixdate, always GMT) of Unix milliseconds: a stored
/// object's `Last-Modified`, which the landing page shows as when a path was pushed.
pub fn http_date(unix_ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_ms / 1000;
    let days = secs / 86_400;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(
            http_date(1_796_583_956_999),
            "Sun, 06 Dec 2026 19:05:56 GMT"
        );
        assert_eq!(
            http_date(4_102_444_799_000),
            "Thu, 31 Dec 2099 23:59:59 GMT"
        );
    }

    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://cache.example.org/nar/x.nar?y#z"),
            Some("https://cache.example.org")
        );
        assert_eq!(
            origin("http://127.0.0.1:8787?q"),
            Some("http://127.0.0.1:8787")
        );
        assert_eq!(origin("http://h"), Some("http://h"));
        assert_eq!(origin("/relative"), None);
        assert_eq!(origin("http:///x"), None);
    }
    use RangeRequest::*;

    #[test]
    fn methods() {
        for method in [
            Method::Get,
            Method::Head,
            Method::Put,
            Method::Post,
            Method::Delete,
        ] {
            assert_eq!(Method::parse(method.as_str()), method);
        }
        assert_eq!(Method::parse("get"), Method::Other);
        assert_eq!(Method::parse("PATCH"), Method::Other);
    }

    #[test]
    fn single_ranges() {
        let size = 1000;
        let cases = [
            ("bytes=0-99", Partial { start: 0, end: 99 }),
            (
                "bytes=100-",
                Partial {
                    start: 100,
                    end: 999,
                },
            ),
            (
                "bytes=-100",
                Partial {
                    start: 900,
                    end: 999,
                },
            ),
            ("bytes=-5000", Partial { start: 0, end: 999 }),
            (
                "bytes=990-5000",
                Partial {
                    start: 990,
                    end: 999,
                },
            ),
            (
                "bytes=999-999",
                Partial {
                    start: 999,
                    end: 999,
                },
            ),
            (" bytes=0-0 ", Partial { start: 0, end: 0 }),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-2000", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
        ];
        for (header, want) in cases {
            assert_eq!(RangeRequest::resolve(Some(header), size), want, "{header}");
        }
    }

    #[test]
    fn ignored_ranges_serve_everything() {
        for header in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=99999999999999999999999-",
            "bytes 0-1",
        ] {
            assert_eq!(RangeRequest::resolve(Some(header), 1000), Full, "{header}");
        }
        assert_eq!(RangeRequest::resolve(None, 1000), Full);
    }

    #[test]
    fn empty_object_has_no_satisfiable_range() {
        assert_eq!(RangeRequest::resolve(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(RangeRequest::resolve(Some("bytes=-1"), 0), Unsatisfiable);
        assert_eq!(RangeRequest::resolve(None, 0), Full);
    }

    #[test]
    fn content_range_values() {
        assert_eq!(content_range(0, 99, 1000), "bytes 0-99/1000");
        assert_eq!(unsatisfied_range(1000), "bytes */1000");
    }

    #[test]
    fn etag_matching() {
        let etag = "\"abc\"";
        assert!(if_none_match_matches("\"abc\"", etag));
        assert!(if_none_match_matches("W/\"abc\"", etag));
        assert!(if_none_match_matches("\"x\", \"abc\"", etag));
        assert!(if_none_match_matches("*", etag));
        assert!(!if_none_match_matches("\"abd\"", etag));
        assert!(!if_none_match_matches("abc", etag));
        assert!(!if_none_match_matches("", etag));
    }

    #[test]
    fn query_strings() {
        let pairs = query_pairs("https://h/p?uploads&uploadId=a%2Bb%3D+c&partNumber=3#frag");
        let expected = [("uploads", ""), ("uploadId", "a+b= c"), ("partNumber", "3")];
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(pairs, expected);
        assert!(query_pairs("https://h/p").is_empty());
        // A bad escape drops that pair only.
        assert_eq!(
            query_pairs("/p?a=%zz&b=1"),
            [("b".to_owned(), "1".to_owned())]
        );
        assert_eq!(query_pairs("/p?a=%ff&b=%"), []);
    }
}
