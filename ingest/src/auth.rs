//! Signed tokens (HS256 JWT) for devices and operators: the secret, minting, verification and
//! revocation. The secret is generated on first start into `<data-dir>/token-secret` (mode 0600);
//! the simulator and other tools read it with `--secret-file`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::store::Revocation;

/// File name of the secret inside the data directory.
pub const SECRET_FILE: &str = "token-secret";
/// Bytes of randomness in a generated secret.
const SECRET_BYTES: usize = 32;
/// Clock skew tolerated when checking expiry, in seconds.
const LEEWAY_S: u64 = 5;

/// Why a token was refused, or a secret could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token in the `Authorization` header nor the `token` query parameter.
    #[error("missing token: send `Authorization: Bearer <token>` or `?token=<token>`")]
    Missing,
    /// Signature, format or claims are wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Revoked with `ingest token revoke`.
    #[error("token revoked")]
    Revoked,
    /// A token of another kind (an operator token on the device endpoint, ...).
    #[error("wrong token kind: expected a {expected} token, found a {found} token")]
    WrongKind {
        /// Kind the endpoint takes.
        expected: &'static str,
        /// Kind presented.
        found: String,
    },
    /// The secret file could not be read or created.
    #[error("token secret {path}: {reason}")]
    Secret {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl AuthError {
    /// Short machine-readable code for JSON bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Invalid(_) => "invalid_token",
            AuthError::Expired => "token_expired",
            AuthError::Revoked => "token_revoked",
            AuthError::WrongKind { .. } => "wrong_token_kind",
            AuthError::Secret { .. } => "secret_unavailable",
        }
    }
}

/// Claims carried by every token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Subject: `device:<id>` or `operator:<name>`.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Issued at, milliseconds (revocation precision within a second).
    pub iat_ms: u64,
    /// Expiry, seconds since the epoch; none means no expiry.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<u64>,
    /// Unique token id, for revoking one token.
    pub jti: String,
    /// Device/pattern grants of an operator token (empty for device tokens).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub devices: Vec<String>,
}

impl Claims {
    /// The device id of a device token.
    pub fn device_id(&self) -> Option<u64> {
        self.sub.strip_prefix("device:")?.parse().ok()
    }

    /// The kind of subject (`device`, `operator`), named in wrong-kind errors.
    pub fn kind(&self) -> &str {
        self.sub.split(':').next().unwrap_or("unknown")
    }
}

/// Mints and verifies tokens with one secret, and knows the current revocations.
pub struct Authority {
    /// Signs new tokens.
    encoding: EncodingKey,
    /// Checks signatures.
    decoding: DecodingKey,
    /// Subject or `jti:<id>` -> tokens issued at or before this time (ms) are refused.
    revoked_ms: RwLock<HashMap<String, i64>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Authority {
    /// An authority over a raw secret.
    pub fn from_secret(secret: &[u8]) -> Authority {
        Authority {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            revoked_ms: RwLock::new(HashMap::new()),
        }
    }

    /// Reads the secret from a file (surrounding whitespace ignored).
    pub fn from_secret_file(path: &Path) -> Result<Authority, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Secret {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let secret = text.trim();
        if secret.len() < 32 {
            return Err(AuthError::Secret {
                path: path.display().to_string(),
                reason: format!(
                    "secret too short: expected at least 32 characters, found {}",
                    secret.len()
                ),
            });
        }
        Ok(Authority::from_secret(secret.as_bytes()))
    }

    /// Loads `<data_dir>/token-secret`, creating it (random, mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Authority, AuthError> {
        let path = secret_path(data_dir);
        if !path.exists() {
            create_secret(&path)?;
        }
        Authority::from_secret_file(&path)
    }

    /// Mints a device token; `ttl` none means no expiry.
    pub fn mint_device(&self, device_id: u64, ttl: Option<Duration>) -> Result<String, AuthError> {
        self.mint(format!("device:{device_id}"), Vec::new(), ttl)
    }

    /// Mints an operator token allowed to watch `devices` (ids or patterns; `*` for all).
    pub fn mint_operator(
        &self,
        name: &str,
        devices: Vec<String>,
        ttl: Option<Duration>,
    ) -> Result<String, AuthError> {
        self.mint(format!("operator:{name}"), devices, ttl)
    }

    fn mint(
        &self,
        sub: String,
        devices: Vec<String>,
        ttl: Option<Duration>,
    ) -> Result<String, AuthError> {
        let ms = now_ms();
        let claims = Claims {
            sub,
            iat: ms / 1000,
            iat_ms: ms,
            exp: ttl.map(|t| ms / 1000 + t.as_secs().max(1)),
            jti: random_hex(12),
            devices,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Checks signature, expiry and revocation; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = ["sub".to_string()].into_iter().collect();
        validation.validate_exp = false; // checked below: `exp` is optional for us
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let claims = data.claims;
        if let Some(exp) = claims.exp
            && now_ms() / 1000 > exp + LEEWAY_S
        {
            return Err(AuthError::Expired);
        }
        if self.is_revoked(&claims) {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }

    /// Verifies a device token and returns its device id.
    pub fn verify_device(&self, token: &str) -> Result<(u64, Claims), AuthError> {
        let claims = self.verify(token)?;
        match claims.device_id() {
            Some(id) => Ok((id, claims)),
            None => Err(AuthError::WrongKind {
                expected: "device",
                found: claims.kind().to_string(),
            }),
        }
    }

    /// Whether these (already verified) claims have been revoked since.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let Ok(map) = self.revoked_ms.read() else {
            return false;
        };
        let issued = claims.iat_ms as i64;
        let by_subject = map.get(&claims.sub).is_some_and(|&t| issued <= t);
        let by_id = map.contains_key(&format!("jti:{}", claims.jti));
        by_subject || by_id
    }

    /// Replaces the known revocations (as loaded from the store).
    pub fn set_revocations(&self, revocations: &[Revocation]) {
        let map = revocations
            .iter()
            .map(|r| (r.subject.clone(), r.issued_before_s))
            .collect();
        if let Ok(mut guard) = self.revoked_ms.write() {
            *guard = map;
        }
    }

    /// The revocation that refuses every token of a device issued until now.
    pub fn revoke_device(device_id: u64) -> Revocation {
        Revocation {
            subject: format!("device:{device_id}"),
            issued_before_s: now_ms() as i64,
        }
    }

    /// The revocation that refuses one token (its signature must be valid).
    pub fn revoke_token(&self, token: &str) -> Result<Revocation, AuthError> {
        let claims = self.verify(token)?;
        Ok(Revocation {
            subject: format!("jti:{}", claims.jti),
            issued_before_s: now_ms() as i64,
        })
    }
}

/// `<data_dir>/token-secret`.
pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRET_FILE)
}

fn create_secret(path: &Path) -> Result<(), AuthError> {
    let err = |e: std::io::Error| AuthError::Secret {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(mut f) => {
            f.write_all(random_hex(SECRET_BYTES).as_bytes())
                .map_err(err)?;
            f.write_all(b"\n").map_err(err)?;
            f.sync_all().map_err(err)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        Authority::from_secret(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn device_token_round_trips() {
        let a = authority();
        let t = a.mint_device(42, None).expect("mint");
        let (id, claims) = a.verify_device(&t).expect("verify");
        assert_eq!(id, 42);
        assert_eq!(claims.exp, None);
    }

    #[test]
    fn tampered_or_foreign_tokens_are_invalid() {
        let a = authority();
        let t = a.mint_device(42, None).expect("mint");
        let other = Authority::from_secret(b"ffffffffffffffffffffffffffffffff");
        assert!(matches!(other.verify(&t), Err(AuthError::Invalid(_))));
        assert!(matches!(a.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let a = authority();
        let ms = now_ms();
        let claims = Claims {
            sub: "device:1".into(),
            iat: ms / 1000 - 100,
            iat_ms: ms - 100_000,
            exp: Some(ms / 1000 - 60),
            jti: "x".into(),
            devices: vec![],
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding)
            .expect("encode");
        assert!(matches!(a.verify(&t), Err(AuthError::Expired)));
    }

    #[test]
    fn revocation_refuses_older_tokens_only() {
        let a = authority();
        let old = a.mint_device(7, None).expect("mint");
        std::thread::sleep(Duration::from_millis(3));
        a.set_revocations(&[Authority::revoke_device(7)]);
        std::thread::sleep(Duration::from_millis(3));
        let new = a.mint_device(7, None).expect("mint");
        assert!(matches!(a.verify(&old), Err(AuthError::Revoked)));
        assert!(
            a.verify(&new).is_ok(),
            "a token minted after the revocation works"
        );
        let single = a.revoke_token(&new).expect("revocation");
        a.set_revocations(&[single]);
        assert!(matches!(a.verify(&new), Err(AuthError::Revoked)));
    }

    #[test]
    fn secret_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("telemux-auth-{}", random_hex(6)));
        let a = Authority::load_or_create(&dir).expect("create");
        let t = a.mint_device(1, None).expect("mint");
        let b = Authority::load_or_create(&dir).expect("reload");
        assert!(b.verify(&t).is_ok(), "same secret after reload");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(secret_path(&dir))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
