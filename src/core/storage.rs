//! What R2's refusals mean. workers-rs hands an R2 error over as text ending in R2's
//! numeric code in parentheses (`put: … (10037)`); this is the one place that reads it.
//! Codes are R2's S3-compatible error codes (developers.cloudflare.com/r2/api/error-codes,
//! each with the HTTP status R2 gives it): 100xx are faults of the request, except the
//! few R2 answers with a 5xx or 429, which are its own and worth a retry.

/// What an R2 error means for the request that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum R2Error {
    /// The bytes do not hash to the SHA-256 the PUT was given (10037, BadDigest): the
    /// uploader sent bytes that are not what their name says.
    HashMismatch,
    /// The multipart upload id is unknown: completed, aborted or expired (10024,
    /// NoSuchUpload; the local simulator says "does not exist" instead).
    NoSuchUpload,
    /// Another fault of the request (e.g. 10011 EntityTooSmall: a part under 5 MiB that
    /// is not the last; 10025 InvalidPart: a wrong ETag): R2's message says which.
    Refused,
    /// R2 or the runtime failed: worth a retry.
    Failed,
}

impl R2Error {
    pub fn classify(message: &str) -> R2Error {
        match code(message) {
            Some("10037") => R2Error::HashMismatch,
            Some("10024") => R2Error::NoSuchUpload,
            _ if message.contains("does not exist") => R2Error::NoSuchUpload,
            // InternalError (500), ServiceUnavailable (503), TooManyRequests (429).
            Some("10001" | "10043" | "10058") => R2Error::Failed,
            Some(code) if code.starts_with("100") => R2Error::Refused,
            _ => R2Error::Failed,
        }
    }
}

/// The five digits of the `(NNNNN)` that ends a line of the message (R2 puts its code
/// at the end).
fn code(message: &str) -> Option<&str> {
    message.lines().find_map(|line| {
        let digits = line.trim_end().strip_suffix(')')?;
        let digits = digits
            .get(digits.len().checked_sub(6)?..)?
            .strip_prefix('(')?;
        digits.bytes().all(|b| b.is_ascii_digit()).then_some(digits)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_mean_what_r2_documents() {
        assert_eq!(
            R2Error::classify(
                "put: The SHA-256 checksum you specified did not match what we received. (10037)"
            ),
            R2Error::HashMismatch
        );
        assert_eq!(
            R2Error::classify(
                "completeMultipartUpload: The specified multipart upload does not exist. (10024)"
            ),
            R2Error::NoSuchUpload
        );
        assert_eq!(
            R2Error::classify("Error: Multipart upload does not exist"),
            R2Error::NoSuchUpload
        );
        assert_eq!(
            R2Error::classify("completeMultipartUpload: Your proposed upload is smaller than the minimum allowed object size. (10011)\nstack"),
            R2Error::Refused
        );
        assert_eq!(
            R2Error::classify("get: We encountered an internal error. (10001)"),
            R2Error::Failed
        );
        assert_eq!(
            R2Error::classify("put: Reduce your request rate. (10058)"),
            R2Error::Failed
        );
        assert_eq!(R2Error::classify("internal error (20000)"), R2Error::Failed);
        assert_eq!(
            R2Error::classify("network connection lost"),
            R2Error::Failed
        );
        assert_eq!(R2Error::classify("a (1003) b"), R2Error::Failed);
    }
}
