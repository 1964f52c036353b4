//! Device tokens: minted from the server's secret file (the same HS256 format as
//! `ingest token device`), or read from a file of `DEVICE_ID TOKEN` lines; operator tokens for
//! dashboard clients minted from the same secret.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Where tokens come from.
pub enum Tokens {
    /// Mint on demand.
    Secret(EncodingKey),
    /// Fixed per device.
    File(HashMap<u64, String>),
    /// No tokens (devices publish to an MQTT broker).
    None,
}

/// Why tokens are unavailable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// File unreadable.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A line of the token file is not `DEVICE_ID TOKEN`.
    #[error("{path}:{line}: expected `DEVICE_ID TOKEN`")]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// No token for a device.
    #[error("no token for device {0} in the token file")]
    Missing(u64),
    /// Minting failed.
    #[error("cannot mint token: {0}")]
    Mint(String),
    /// Dashboard clients need an operator token and none can be had.
    #[error("dashboard clients need an operator token: give --secret-file or --operator-token")]
    NoOperatorToken,
}

/// Lifetime of a minted operator token (longer than any run).
const OPERATOR_TTL_S: u64 = 24 * 3600;

/// Token claims, as `ingest`'s `auth::Claims` reads them.
#[derive(Serialize)]
struct Claims<'a> {
    /// `device:<id>` or `operator:<name>`.
    sub: &'a str,
    /// Issued at, seconds.
    iat: u64,
    /// Issued at, milliseconds.
    iat_ms: u64,
    /// Expiry, seconds (operator tokens only).
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    /// Unique id.
    jti: String,
    /// What an operator token may watch (empty for device tokens).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    devices: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Tokens {
    /// Reads the secret file.
    pub fn from_secret_file(path: &Path) -> Result<Tokens, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Tokens::Secret(EncodingKey::from_secret(
            text.trim().as_bytes(),
        )))
    }

    /// Reads a token file.
    pub fn from_token_file(path: &Path) -> Result<Tokens, TokenError> {
        let show = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokenError::Read {
            path: show.clone(),
            reason: e.to_string(),
        })?;
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(tok), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokenError::BadLine {
                    path: show,
                    line: i + 1,
                });
            };
            let id: u64 = id.parse().map_err(|_| TokenError::BadLine {
                path: show.clone(),
                line: i + 1,
            })?;
            map.insert(id, tok.to_string());
        }
        Ok(Tokens::File(map))
    }

    /// The token for a device.
    pub fn for_device(&self, device_id: u64) -> Result<String, TokenError> {
        match self {
            Tokens::File(map) => map
                .get(&device_id)
                .cloned()
                .ok_or(TokenError::Missing(device_id)),
            Tokens::Secret(key) => {
                let ms = now_ms();
                let sub = format!("device:{device_id}");
                let claims = Claims {
                    sub: &sub,
                    iat: ms / 1000,
                    iat_ms: ms,
                    exp: None,
                    jti: format!("sim-{device_id}-{ms}"),
                    devices: Vec::new(),
                };
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
                    .map_err(|e| TokenError::Mint(e.to_string()))
            }
            Tokens::None => Err(TokenError::Missing(device_id)),
        }
    }

    /// An operator token (same format as `ingest token operator --devices '*'`) allowed to watch
    /// every device, valid for a day; only with a secret.
    pub fn operator(&self, name: &str) -> Result<String, TokenError> {
        let Tokens::Secret(key) = self else {
            return Err(TokenError::NoOperatorToken);
        };
        let ms = now_ms();
        let sub = format!("operator:{name}");
        let claims = Claims {
            sub: &sub,
            iat: ms / 1000,
            iat_ms: ms,
            exp: Some(ms / 1000 + OPERATOR_TTL_S),
            jti: format!("sim-{name}-{ms}"),
            devices: vec!["*".to_string()],
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| TokenError::Mint(e.to_string()))
    }
}
