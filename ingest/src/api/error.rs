//! The history API's one error type: every refusal becomes an HTTP status and a JSON body
//! `{"error": code, "message": text}`, plus `"parameter"` naming the query parameter at fault
//! when there is one, so handlers can use `?` and clients can point at the field.

use http::StatusCode;
use warp::Reply;

use crate::store::StoreError;

/// Why an API request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter this route does not take.
    #[error("unknown parameter `{0}` (this route takes: {1})")]
    UnknownParameter(String, &'static str),
    /// A parameter that takes one value was given more than once.
    #[error("parameter `{0}` is given more than once; it takes a single value")]
    DuplicateParameter(String),
    /// A required parameter is absent.
    #[error("missing parameter `{0}`: {1}")]
    MissingParameter(&'static str, &'static str),
    /// A parameter's value is malformed or out of its range.
    #[error("invalid `{param}`: expected {expected}, found `{found}`")]
    InvalidParameter {
        /// The parameter.
        param: &'static str,
        /// What it takes.
        expected: String,
        /// What was sent (truncated).
        found: String,
    },
    /// A request over a configured limit (range, buckets, rows, series).
    #[error("`{param}` over the limit: {what} is {found}, the limit is {limit} (`{setting}`)")]
    OverLimit {
        /// The parameter that carries the excess.
        param: &'static str,
        /// What was measured.
        what: &'static str,
        /// The measured amount.
        found: String,
        /// The configured maximum.
        limit: String,
        /// The setting holding the maximum.
        setting: &'static str,
    },
    /// The token may not see this device.
    #[error("device {0} is not covered by this token's grants")]
    NotGranted(u64),
    /// The server knows nothing of this device (never connected, not configured).
    #[error("unknown device {0}: it never connected and is not configured")]
    UnknownDevice(u64),
    /// The store failed.
    #[error("store error: {0}")]
    Store(#[from] StoreError),
}

/// Longest echo of a refused value in an error message.
const MAX_ECHO: usize = 64;

impl ApiError {
    /// A malformed value of `param`.
    pub fn invalid(param: &'static str, expected: impl Into<String>, found: &str) -> ApiError {
        ApiError::InvalidParameter {
            param,
            expected: expected.into(),
            found: found.chars().take(MAX_ECHO).collect(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotGranted(_) => StatusCode::FORBIDDEN,
            ApiError::UnknownDevice(_) => StatusCode::NOT_FOUND,
            ApiError::Store(StoreError::Closed) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Short machine-readable code (JSON `error`, metrics label).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnknownParameter(..) => "unknown_parameter",
            ApiError::DuplicateParameter(_) => "duplicate_parameter",
            ApiError::MissingParameter(..) => "missing_parameter",
            ApiError::InvalidParameter { .. } => "invalid_parameter",
            ApiError::OverLimit { .. } => "over_limit",
            ApiError::NotGranted(_) => "device_not_granted",
            ApiError::UnknownDevice(_) => "unknown_device",
            ApiError::Store(StoreError::Closed) => "store_unavailable",
            ApiError::Store(_) => "store_error",
        }
    }

    /// The query parameter at fault, if any.
    pub fn parameter(&self) -> Option<&str> {
        match self {
            ApiError::UnknownParameter(p, _) | ApiError::DuplicateParameter(p) => Some(p),
            ApiError::MissingParameter(p, _) => Some(p),
            ApiError::InvalidParameter { param, .. } | ApiError::OverLimit { param, .. } => {
                Some(param)
            }
            _ => None,
        }
    }

    /// The response: status and JSON body.
    pub fn response(&self) -> warp::reply::Response {
        let mut body = serde_json::json!({"error": self.code(), "message": self.to_string()});
        if let Some(p) = self.parameter() {
            body["parameter"] = serde_json::Value::String(p.to_string());
        }
        if let ApiError::NotGranted(id) | ApiError::UnknownDevice(id) = self {
            body["device"] = serde_json::Value::String(id.to_string());
        }
        warp::reply::with_status(warp::reply::json(&body), self.status()).into_response()
    }
}
