//! Who is calling the public order API: HS256 JSON Web Tokens.
//!
//! Only HS256 with the configured secret is accepted; `alg: none`, every other algorithm, a bad
//! signature, a wrong issuer or audience, an expired token or one not valid yet are refused
//! (small leeway for clock skew), each with a message that says which. In dev mode without a
//! configured secret, one is generated into the data folder on first start (mode 0600);
//! production mode refuses to start without a configured secret of at least 32 bytes.

use host::{CommonConfig, ConfigError, Problem};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// JWT settings (env `ORDER_JWT__SECRET`, `ORDER_JWT__ISSUER`, …).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct JwtConfig {
    /// The HS256 secret tokens are signed with; unset: generated into the data folder (dev mode
    /// only).
    pub secret: Option<String>,
    /// The secret before the last rotation: tokens it signed are still accepted (until they
    /// expire, at most `max_lifetime_secs`), none is signed with it. Rotate by moving `secret`
    /// here and setting a new `secret`; drop it a day later.
    #[serde(default)]
    pub previous_secret: Option<String>,
    pub issuer: String,
    pub audience: String,
    /// Allowed clock skew for `exp` and `nbf` (at most [`MAX_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// The longest a token may be valid: one whose `exp` is further away than this is refused
    /// (a leaked long-lived token is a long-lived account takeover).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_secs: u64,
}

fn default_max_lifetime() -> u64 {
    24 * 3600
}

/// The most clock skew a deployment may allow.
pub const MAX_LEEWAY_SECS: u64 = 300;

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("JwtConfig")
            .field("secret", &hidden(&self.secret))
            .field("previous_secret", &hidden(&self.previous_secret))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .finish()
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            previous_secret: None,
            issuer: "tcc-pay-dev".into(),
            audience: "tcc-pay-orders".into(),
            leeway_secs: 30,
            max_lifetime_secs: default_max_lifetime(),
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted (only HS256)")]
    Algorithm,
    #[error(
        "the token's signature does not verify (minted by another platform, or before its data \
         folder was reset? get a new token)"
    )]
    Signature,
    #[error(
        "the token was signed with a key this service does not know (rotated out, or another \
         platform's: a data folder reset makes new keys); get a new token"
    )]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    Issuer,
    #[error("the token is meant for another audience")]
    Audience,
    #[error("the token's claims are incomplete or invalid: {0}")]
    Claims(String),
    #[error("the token is valid for longer than this service accepts")]
    TooLong,
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        let challenge = match e {
            AuthError::Missing => "Bearer realm=\"orders\"".to_owned(),
            _ => format!(
                "Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"{e}\""
            ),
        };
        Problem::unauthorized(e.to_string(), challenge)
    }
}

/// Verifies and mints tokens.
#[derive(Clone)]
pub struct Authenticator {
    /// The current key's id (`kid` of every token minted here) and its verifying key.
    current: (String, DecodingKey),
    /// The key before the last rotation, still accepted.
    previous: Option<(String, DecodingKey)>,
    encoding: EncodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    max_lifetime: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Shortest secret accepted in production mode.
pub const MIN_PRODUCTION_SECRET: usize = 32;

impl Authenticator {
    /// From a secret and the JWT settings.
    pub fn new(secret: &[u8], config: &JwtConfig) -> Authenticator {
        Self::rotating(secret, None, config)
    }

    /// From the current secret, the one before it (still accepted), and the JWT settings.
    pub fn rotating(secret: &[u8], previous: Option<&[u8]>, config: &JwtConfig) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.leeway = config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Authenticator {
            current: (key_id(secret), DecodingKey::from_secret(secret)),
            previous: previous.map(|p| (key_id(p), DecodingKey::from_secret(p))),
            encoding: EncodingKey::from_secret(secret),
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_lifetime: config.max_lifetime_secs,
        }
    }

    /// The configured secret, or in dev mode the one in `<data_dir>/order.jwt-secret`
    /// (generated on first use).
    pub fn from_config(
        config: &JwtConfig,
        common: &CommonConfig,
    ) -> Result<Authenticator, ConfigError> {
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(ConfigError(format!(
                "jwt.leeway_secs must be at most {MAX_LEEWAY_SECS}"
            )));
        }
        if config.max_lifetime_secs == 0 {
            return Err(ConfigError("jwt.max_lifetime_secs must be positive".into()));
        }
        let previous = config.previous_secret.as_deref().map(str::as_bytes);
        if common.production && previous.is_some_and(|p| p.len() < MIN_PRODUCTION_SECRET) {
            return Err(ConfigError(format!(
                "jwt.previous_secret must be at least {MIN_PRODUCTION_SECRET} bytes in production mode"
            )));
        }
        if let Some(secret) = &config.secret {
            if common.production && secret.len() < MIN_PRODUCTION_SECRET {
                return Err(ConfigError(format!(
                    "jwt.secret must be at least {MIN_PRODUCTION_SECRET} bytes in production mode"
                )));
            }
            return Ok(Authenticator::rotating(secret.as_bytes(), previous, config));
        }
        if common.production {
            return Err(ConfigError(
                "jwt.secret must be configured in production mode (generated dev secrets are refused)".into(),
            ));
        }
        let secret =
            host::config::dev_secret(&common.data_dir.join("order.jwt-secret"), "dev-only")?;
        Ok(Authenticator::rotating(secret.as_bytes(), previous, config))
    }

    /// A token for `sub`, valid from now for `ttl`.
    pub fn mint(&self, sub: &str, ttl: Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.0.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("HS256 signing with a byte secret cannot fail")
    }

    /// Checks an `Authorization` header value.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        // The key the token names; without a name (tokens minted before key ids), the current
        // one, then the previous.
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        let keys: Vec<&DecodingKey> = match kid {
            Some(kid) => vec![self.key(&kid).ok_or(AuthError::UnknownKey)?],
            None => std::iter::once(&self.current.1)
                .chain(self.previous.as_ref().map(|(_, k)| k))
                .collect(),
        };
        let mut result = Err(AuthError::Signature);
        for key in keys {
            result = self.decode(token, key);
            if !matches!(result, Err(AuthError::Signature)) {
                break;
            }
        }
        let data = result?;
        let now = jsonwebtoken::get_current_timestamp();
        if data.claims.exp > now + self.max_lifetime + self.validation.leeway {
            return Err(AuthError::TooLong);
        }
        let sub = data.claims.sub;
        tcc::check::id("sub", &sub).map_err(|r| AuthError::Claims(r.message))?;
        Ok(Caller { user_id: sub })
    }

    fn key(&self, kid: &str) -> Option<&DecodingKey> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|(id, _)| id == kid)
            .map(|(_, k)| k)
    }

    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
    ) -> Result<jsonwebtoken::TokenData<Claims>, AuthError> {
        jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|e| {
            match e.kind() {
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidAudience => AuthError::Audience,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm => AuthError::Algorithm,
                ErrorKind::MissingRequiredClaim(c) => AuthError::Claims(format!("missing {c}")),
                ErrorKind::InvalidClaimFormat(c) => AuthError::Claims(format!("bad {c}")),
                // `alg: none` (or any name the library does not know) fails to parse the header.
                ErrorKind::Json(j) if j.to_string().contains("unknown variant") => {
                    AuthError::Algorithm
                }
                _ => AuthError::Malformed,
            }
        })
    }
}

/// A key's public name: the first 16 hex digits of its secret's SHA-256 (names the key
/// without revealing anything usable about a 32-byte random secret).
fn key_id(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(secret)[..8])
}

impl actix_web::FromRequest for Caller {
    type Error = Problem;
    type Future = std::future::Ready<Result<Caller, Problem>>;

    /// Needs `web::Data<Authenticator>` in the app data.
    fn from_request(req: &actix_web::HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let result = match req.app_data::<actix_web::web::Data<Authenticator>>() {
            None => Err(Problem::internal("no authenticator configured")),
            Some(auth) => auth
                .verify(
                    req.headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok()),
                )
                .map_err(Problem::from),
        };
        std::future::ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, get_current_timestamp};

    const SECRET: &[u8] = b"test-secret-0123456789-0123456789";

    fn auth() -> Authenticator {
        Authenticator::new(SECRET, &JwtConfig::default())
    }

    fn claims(sub: &str) -> Claims {
        let now = get_current_timestamp();
        Claims {
            sub: sub.into(),
            iss: "tcc-pay-dev".into(),
            aud: "tcc-pay-orders".into(),
            exp: now + 600,
            nbf: now,
            iat: now,
        }
    }

    fn signed(c: &Claims, alg: Algorithm, secret: &[u8]) -> String {
        encode(&Header::new(alg), c, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn bearer(token: &str) -> Option<String> {
        Some(format!("Bearer {token}"))
    }

    fn verify(token: &str) -> Result<Caller, AuthError> {
        auth().verify(bearer(token).as_deref())
    }

    #[test]
    fn after_a_rotation_old_tokens_still_verify_new_ones_name_the_new_key_and_dropped_keys_are_named_as_unknown(
    ) {
        const NEW: &[u8] = b"the-next-secret-0123456789-012345";
        let config = JwtConfig::default();
        let old_token = auth().mint("alice", Duration::from_secs(60));
        let legacy = signed(&claims("bob"), Algorithm::HS256, SECRET); // no kid
        let rotated = Authenticator::rotating(NEW, Some(SECRET), &config);
        assert_eq!(
            rotated
                .verify(bearer(&old_token).as_deref())
                .unwrap()
                .user_id,
            "alice"
        );
        assert_eq!(
            rotated.verify(bearer(&legacy).as_deref()).unwrap().user_id,
            "bob"
        );
        let new_token = rotated.mint("carol", Duration::from_secs(60));
        let kid = jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .unwrap();
        assert_eq!(kid, key_id(NEW));
        assert!(!kid.is_empty() && !String::from_utf8_lossy(NEW).contains(&kid));
        // The old key dropped: its tokens are refused, naming why.
        let done = Authenticator::new(NEW, &config);
        assert_eq!(
            done.verify(bearer(&old_token).as_deref()),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(
            done.verify(bearer(&legacy).as_deref()),
            Err(AuthError::Signature)
        );
        assert_eq!(
            done.verify(bearer(&new_token).as_deref()).unwrap().user_id,
            "carol"
        );
        // A kid that names a known key does not let another key's signature through.
        let mut forged = Header::new(Algorithm::HS256);
        forged.kid = Some(key_id(NEW));
        let forged = encode(
            &forged,
            &claims("mallory"),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            done.verify(bearer(&forged).as_deref()),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn the_configuration_s_debug_output_hides_the_secrets() {
        let config = JwtConfig {
            secret: Some("s3cr3t-value-0123456789".into()),
            previous_secret: Some("older-s3cr3t-0123456789".into()),
            ..JwtConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }

    #[test]
    fn a_minted_token_is_accepted_and_names_its_subject() {
        let token = auth().mint("alice", Duration::from_secs(60));
        assert_eq!(verify(&token).unwrap().user_id, "alice");
    }

    #[test]
    fn a_missing_or_non_bearer_header_is_refused() {
        assert_eq!(auth().verify(None), Err(AuthError::Missing));
        assert_eq!(
            auth().verify(Some("Basic YWxpY2U6eA==")),
            Err(AuthError::Missing)
        );
        assert_eq!(auth().verify(Some("Bearer ")), Err(AuthError::Missing));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let payload = serde_json::to_string(&claims("alice")).unwrap();
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
            let token = format!("{}.{}.", b64(header), b64(&payload));
            assert_eq!(verify(&token), Err(AuthError::Algorithm), "{header}");
        }
    }

    #[test]
    fn other_algorithms_are_refused_even_with_the_right_secret() {
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(
                verify(&signed(&claims("alice"), alg, SECRET)),
                Err(AuthError::Algorithm)
            );
        }
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = signed(
            &claims("alice"),
            Algorithm::HS256,
            b"someone-elses-secret-0123456789ab",
        );
        assert_eq!(verify(&token), Err(AuthError::Signature));
        // A tampered payload too.
        let good = signed(&claims("alice"), Algorithm::HS256, SECRET);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let other = signed(&claims("bob"), Algorithm::HS256, SECRET);
        parts[1] = other.split('.').nth(1).unwrap().to_owned();
        assert_eq!(verify(&parts.join(".")), Err(AuthError::Signature));
    }

    #[test]
    fn a_token_valid_for_longer_than_the_maximum_is_refused_and_the_leeway_is_bounded() {
        let config = JwtConfig::default();
        let auth = Authenticator::new(b"a-test-secret-of-enough-length-000", &config);
        let day = auth.mint("alice", Duration::from_secs(24 * 3600));
        assert!(auth.verify(Some(&format!("Bearer {day}"))).is_ok());
        let week = auth.mint("alice", Duration::from_secs(7 * 24 * 3600));
        assert_eq!(
            auth.verify(Some(&format!("Bearer {week}"))),
            Err(AuthError::TooLong)
        );
        let common = CommonConfig::local("order", 1, 2);
        let lax = JwtConfig {
            leeway_secs: MAX_LEEWAY_SECS + 1,
            secret: Some("x".repeat(40)),
            ..JwtConfig::default()
        };
        let refused = Authenticator::from_config(&lax, &common).unwrap_err();
        assert!(refused.to_string().contains("leeway_secs"), "{refused}");
    }

    #[test]
    fn an_expired_token_is_refused_but_the_leeway_is_honoured() {
        let now = get_current_timestamp();
        let mut c = claims("alice");
        c.exp = now - 120;
        assert_eq!(
            verify(&signed(&c, Algorithm::HS256, SECRET)),
            Err(AuthError::Expired)
        );
        c.exp = now - 10; // within 30 s of leeway
        assert!(verify(&signed(&c, Algorithm::HS256, SECRET)).is_ok());
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let mut c = claims("alice");
        c.nbf = get_current_timestamp() + 600;
        assert_eq!(
            verify(&signed(&c, Algorithm::HS256, SECRET)),
            Err(AuthError::NotYetValid)
        );
    }

    #[test]
    fn a_wrong_issuer_or_audience_is_refused() {
        let mut c = claims("alice");
        c.iss = "evil".into();
        assert_eq!(
            verify(&signed(&c, Algorithm::HS256, SECRET)),
            Err(AuthError::Issuer)
        );
        let mut c = claims("alice");
        c.aud = "payments".into();
        assert_eq!(
            verify(&signed(&c, Algorithm::HS256, SECRET)),
            Err(AuthError::Audience)
        );
    }

    #[test]
    fn malformed_tokens_and_bad_subjects_are_refused() {
        for junk in ["abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30"] {
            assert!(verify(junk).is_err(), "{junk}");
        }
        assert!(matches!(
            verify(&signed(&claims("a b"), Algorithm::HS256, SECRET)),
            Err(AuthError::Claims(_))
        ));
        assert!(matches!(
            verify(&signed(&claims(""), Algorithm::HS256, SECRET)),
            Err(AuthError::Claims(_))
        ));
    }

    #[test]
    fn every_refusal_is_a_401_problem_with_a_challenge() {
        use actix_web::ResponseError;
        let p: Problem = AuthError::Expired.into();
        let res = p.error_response();
        assert_eq!(res.status(), 401);
        let challenge = res
            .headers()
            .get("www-authenticate")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            challenge.contains("invalid_token") && challenge.contains("expired"),
            "{challenge}"
        );
    }

    #[test]
    fn production_mode_refuses_generated_and_short_secrets() {
        let mut common = CommonConfig::local("order", 1, 2);
        common.production = true;
        assert!(Authenticator::from_config(&JwtConfig::default(), &common).is_err());
        let short = JwtConfig {
            secret: Some("short".into()),
            ..JwtConfig::default()
        };
        assert!(Authenticator::from_config(&short, &common).is_err());
        let long = JwtConfig {
            secret: Some("x".repeat(MIN_PRODUCTION_SECRET)),
            ..JwtConfig::default()
        };
        assert!(Authenticator::from_config(&long, &common).is_ok());
    }

    #[test]
    fn a_dev_secret_is_generated_once_and_kept_private() {
        let dir = tempfile_dir();
        let mut common = CommonConfig::local("order", 1, 2);
        common.data_dir = dir.join("data");
        let a = Authenticator::from_config(&JwtConfig::default(), &common).unwrap();
        let token = a.mint("alice", Duration::from_secs(60));
        let b = Authenticator::from_config(&JwtConfig::default(), &common).unwrap();
        assert_eq!(
            b.verify(bearer(&token).as_deref()).unwrap().user_id,
            "alice"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(common.data_dir.join("order.jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "order-auth-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
