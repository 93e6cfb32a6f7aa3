//! Mutual TLS on every gRPC hop (order-svc → coordinator → participants), and who may call whom.
//!
//! Without it, anyone who reaches a participant's gRPC port can Try and Confirm a hold from any
//! account to any merchant. With it, every service holds one certificate signed by the
//! deployment's CA, presented both as a server and as a client. Its DNS names are the service's
//! role (`coordinator`, `order`, `payment`, `inventory`, `operator`) and the host names it is
//! reached by. A server accepts only clients whose certificate that CA signed *and* whose role is
//! on its list ([`Callers`]): participants take calls from the coordinator; the coordinator from
//! order-svc and operators. A client checks the server's certificate for the host in the URL, so
//! an `http://` participant URL is dialled as `https://` ([`endpoint`]).
//!
//! Where the certificates come from ([`TlsSettings`], `<PREFIX>TLS__*`):
//! - production: files the operator provides (`CA_FILE`, `CERT_FILE`, `KEY_FILE`, or a `DIR`
//!   laid out as `platform certs` writes it); a service refuses to start without them, or with
//!   TLS off;
//! - dev: a CA and the service's certificate generated at first start into a folder (`DIR`,
//!   default `<data_dir>/tls`; keys 0600), reused after. Services that share the folder trust
//!   each other (the one-command platform's do). `MODE=off` turns TLS off, to measure its cost.

pub mod callers;
pub mod dev;

pub use callers::Callers;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The roles a certificate can carry.
pub const ROLES: [&str; 5] = ["coordinator", "order", "payment", "inventory", "operator"];

/// `<PREFIX>TLS__*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsSettings {
    #[serde(default)]
    pub mode: TlsMode,
    /// Dev: where the CA and the certificates are generated (default `<data_dir>/tls`).
    pub dir: Option<PathBuf>,
    /// Provided certificates (all three, or none): the CA's, and this service's with its key.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    On,
    /// Plaintext gRPC (dev only).
    Off,
}

/// Why a service's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "tls: production mode needs provided certificates (tls.ca_file, tls.cert_file, tls.key_file, or a tls.dir that `platform certs` filled); generated ones are refused"
    )]
    ProductionNeedsFiles,
    #[error("tls: mode = off is refused in production mode")]
    ProductionNeedsTls,
    #[error(
        "tls: the CA's private key is in {} (ca/ca.key): a service holds its own certificate and the CA's, never the CA's key (`platform certs --split` hands each service only its own)",
        .0.display()
    )]
    CaKeyExposed(PathBuf),
    #[error("tls: {0} must be an http:// or https:// URL to be dialled over TLS")]
    NotHttps(String),
    #[error("tls: ca_file, cert_file and key_file go together; {0} is missing")]
    Partial(&'static str),
    #[error("tls: {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Invalid(String),
}

/// A service's certificates, as PEM.
#[derive(Clone)]
pub struct Trust {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trust(***)")
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Io {
        path: path.to_owned(),
        source,
    })
}

impl Trust {
    /// The certificates of the service called `role`, as `settings` say; `None` when TLS is
    /// off (dev only).
    pub fn resolve(
        settings: &TlsSettings,
        data_dir: &Path,
        production: bool,
        role: &str,
    ) -> Result<Option<Trust>, TrustError> {
        if settings.mode == TlsMode::Off {
            if production {
                return Err(TrustError::ProductionNeedsTls);
            }
            tracing::warn!(
                "gRPC without TLS (tls.mode = off): anyone who reaches the port can call it"
            );
            return Ok(None);
        }
        match (&settings.ca_file, &settings.cert_file, &settings.key_file) {
            (Some(ca), Some(cert), Some(key)) => Trust::from_files(ca, cert, key).map(Some),
            // Production takes a folder laid out as `platform certs` writes it, never generates.
            (None, None, None) if production => match &settings.dir {
                Some(dir) => {
                    if dir.join("ca").join("ca.key").exists() {
                        return Err(TrustError::CaKeyExposed(dir.clone()));
                    }
                    let f = dev::files_in(dir, role);
                    if !(f.ca.exists() && f.cert.exists() && f.key.exists()) {
                        return Err(TrustError::ProductionNeedsFiles);
                    }
                    Trust::from_files(&f.ca, &f.cert, &f.key).map(Some)
                }
                None => Err(TrustError::ProductionNeedsFiles),
            },
            (None, None, None) => {
                let dir = settings.dir.clone().unwrap_or_else(|| data_dir.join("tls"));
                let files = dev::issue(&dir, role)?;
                Trust::from_files(&files.ca, &files.cert, &files.key).map(Some)
            }
            (None, _, _) => Err(TrustError::Partial("ca_file")),
            (_, None, _) => Err(TrustError::Partial("cert_file")),
            (_, _, None) => Err(TrustError::Partial("key_file")),
        }
    }

    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Trust, TrustError> {
        let trust = Trust {
            ca: read(ca)?,
            cert: read(cert)?,
            key: read(key)?,
        };
        // Fail at start, not at the first call.
        trust
            .server_config_checked()
            .map_err(|e| TrustError::Invalid(format!("the certificates cannot be used: {e}")))?;
        Ok(trust)
    }

    fn server_config_checked(&self) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .tls_config(self.server_config())
            .map(drop)
    }

    /// For a gRPC server: its certificate, and client certificates required, signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// For a gRPC client: the CA to check servers with, and its certificate to show them.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// A channel endpoint for `url`: over mutual TLS when `trust` is given (an `http://` URL is
/// dialled as `https://`), plaintext otherwise. The server must prove the role `server`
/// (`Some("coordinator")`), whatever host the URL names; with `None`, the URL's host (dev on
/// the loopback, where every dev certificate is valid for 127.0.0.1).
pub fn endpoint(
    url: &str,
    trust: Option<&Trust>,
    server: Option<&str>,
) -> Result<Endpoint, TrustError> {
    let bad = |e: tonic::transport::Error| TrustError::Invalid(format!("{url}: {e}"));
    let Some(t) = trust else {
        return Endpoint::from_shared(url.to_owned()).map_err(bad);
    };
    let url = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => format!("https://{rest}"),
        _ => url.to_owned(),
    };
    let endpoint = Endpoint::from_shared(url.clone()).map_err(bad)?;
    // tonic dials TLS for https only: anything else would silently go out in plaintext.
    if endpoint.uri().scheme_str() != Some("https") {
        return Err(TrustError::NotHttps(url));
    }
    let mut tls = t.client_config();
    if let Some(role) = server {
        tls = tls.domain_name(role);
    }
    endpoint.tls_config(tls).map_err(bad)
}

/// The role a request's client certificate proved ([`Callers`] puts it in the request's
/// extensions), for a service that lets different callers do different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerRole(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    fn trust_in(dir: &Path, role: &str) -> Trust {
        let f = dev::issue(dir, role).unwrap();
        Trust::from_files(&f.ca, &f.cert, &f.key).unwrap()
    }

    fn leaf(dir: &Path, role: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        let pem = std::fs::read_to_string(dev::files_in(dir, role).cert).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        vec![rustls_pki_types::CertificateDer::from(decode(&b64))]
    }

    /// Base64 without a crate: test-only.
    fn decode(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut buf, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            buf = (buf << 6) | A.iter().position(|a| *a == c).unwrap() as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
            }
        }
        out
    }

    #[test]
    fn a_role_s_certificate_admits_that_role_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let allowed: &[&'static str] = &["coordinator"];
        trust_in(dir.path(), "coordinator");
        trust_in(dir.path(), "payment");
        let coordinator = leaf(dir.path(), "coordinator");
        assert_eq!(
            callers::role_of(Some(std::sync::Arc::new(coordinator)), allowed).unwrap(),
            "coordinator"
        );
        let payment = leaf(dir.path(), "payment");
        let refused = callers::role_of(Some(std::sync::Arc::new(payment)), allowed).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let none = callers::role_of(None, allowed).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn services_starting_at_once_on_one_folder_share_one_ca_and_keys_stay_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cas: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = ROLES
                .iter()
                .map(|role| {
                    let d = dir.path();
                    s.spawn(move || std::fs::read(dev::issue(d, role).unwrap().ca).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(cas.windows(2).all(|w| w[0] == w[1]), "one CA");
        for role in ROLES {
            let key = dev::files_in(dir.path(), role).key;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{role}");
        }
        // A second issue keeps what is there.
        let again = std::fs::read(dev::issue(dir.path(), "payment").unwrap().cert).unwrap();
        let first = std::fs::read(dev::files_in(dir.path(), "payment").cert).unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn a_folder_abandoned_by_a_killed_issuer_is_swept_and_a_live_one_is_left() {
        let dir = tempfile::tempdir().unwrap();
        // pid 2^22 + 1 is beyond Linux's pid_max: no such process.
        let dead = dir.path().join(".ca-4194305-1f");
        let live = dir.path().join(format!(".ca-{}-2f", std::process::id()));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        dev::issue(dir.path(), "payment").unwrap();
        assert!(!dead.exists(), "the dead issuer's folder stays");
        assert!(live.exists(), "a live issuer's folder was taken away");
    }

    #[test]
    fn production_takes_provided_certificates_only_and_never_tls_off() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let generated = TlsSettings::default();
        assert!(matches!(
            Trust::resolve(&generated, &data, true, "payment"),
            Err(TrustError::ProductionNeedsFiles)
        ));
        assert!(Trust::resolve(&generated, &data, false, "payment")
            .unwrap()
            .is_some());
        let off = TlsSettings {
            mode: TlsMode::Off,
            ..TlsSettings::default()
        };
        assert!(matches!(
            Trust::resolve(&off, &data, true, "payment"),
            Err(TrustError::ProductionNeedsTls)
        ));
        assert!(Trust::resolve(&off, &data, false, "payment")
            .unwrap()
            .is_none());
        // A service's folder as `dev::split` hands it out is provided; the issuing folder (it
        // holds the CA's key) is refused; an empty one is not provided, and is not filled.
        let issued = dir.path().join("issued");
        dev::issue(&issued, "payment").unwrap();
        let from_dir = |d: &Path| TlsSettings {
            dir: Some(d.to_owned()),
            ..TlsSettings::default()
        };
        assert!(matches!(
            Trust::resolve(&from_dir(&issued), &data, true, "payment"),
            Err(TrustError::CaKeyExposed(_))
        ));
        let provided = dir.path().join("provided");
        dev::split(&issued, "payment", &provided).unwrap();
        assert!(Trust::resolve(&from_dir(&provided), &data, true, "payment").is_ok());
        assert!(!provided.join("ca").join("ca.key").exists());
        let empty = dir.path().join("empty");
        assert!(Trust::resolve(&from_dir(&empty), &data, true, "payment").is_err());
        assert!(!empty.exists(), "production generates nothing");
        let partial = TlsSettings {
            ca_file: Some(dev::files_in(&provided, "payment").ca),
            ..TlsSettings::default()
        };
        assert!(matches!(
            Trust::resolve(&partial, &data, true, "payment"),
            Err(TrustError::Partial("cert_file"))
        ));
    }
}
