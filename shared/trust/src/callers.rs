//! Who may call a gRPC server: a tower layer that admits a request only when the client's
//! certificate (already checked against the CA by the TLS handshake) carries one of the
//! allowed roles as a DNS name. Anything else is PERMISSION_DENIED before any handler runs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The roles a server takes calls from (`&["coordinator"]` for a participant).
#[derive(Debug, Clone, Copy)]
pub struct Callers {
    pub allowed: &'static [&'static str],
}

impl<S> tower::Layer<S> for Callers {
    type Service = CallerCheck<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallerCheck {
            inner,
            allowed: self.allowed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallerCheck<S> {
    inner: S,
    allowed: &'static [&'static str],
}

/// The role among `allowed` the first (end-entity) certificate carries.
pub fn role_of(
    certs: Option<Arc<Vec<rustls_pki_types::CertificateDer<'static>>>>,
    allowed: &[&'static str],
) -> Result<&'static str, tonic::Status> {
    let certs = certs.ok_or_else(|| {
        tonic::Status::unauthenticated("a client certificate is required (mutual TLS)")
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("a client certificate is required"))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|_| tonic::Status::unauthenticated("the client certificate cannot be read"))?;
    allowed
        .iter()
        .copied()
        .find(|role| {
            rustls_pki_types::ServerName::try_from(*role)
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        })
        .ok_or_else(|| {
            tonic::Status::permission_denied(format!(
                "this service takes calls from {} only",
                allowed.join(", ")
            ))
        })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CallerCheck<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs());
        match role_of(certs, self.allowed) {
            Ok(role) => {
                let mut request = request;
                request.extensions_mut().insert(crate::CallerRole(role));
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "gRPC caller refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
