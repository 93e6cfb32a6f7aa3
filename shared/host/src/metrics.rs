//! Prometheus metrics: one registry per process, rendered at `/metrics`, plus HTTP request
//! metrics recorded by [`track_requests`].

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The process's metric registry. Register at start-up, render on scrape.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers metrics; `f` gets the registry.
    pub fn register<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

type RequestLabels = [(&'static str, String); 3];
type RouteLabels = [(&'static str, String); 1];

/// `http_requests_total{method,route,status}` and `http_request_seconds{route}`.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
            });
        metrics.register(|r| {
            r.register(
                "http_requests",
                "HTTP requests by method, route and status",
                requests.clone(),
            );
            r.register(
                "http_request_seconds",
                "HTTP request latency by route",
                latency.clone(),
            );
        });
        HttpMetrics { requests, latency }
    }
}

/// The method as a label: one of the standard ones, or `other`. A client can send any token as
/// a method; one label value each would grow the metrics without bound.
fn method_label(m: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    const KNOWN: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    KNOWN
        .iter()
        .find(|(k, _)| k == m)
        .map_or("other", |(_, name)| name)
}

/// Middleware (for `actix_web::middleware::from_fn`) recording [`HttpMetrics`], which must be in
/// the app data as `web::Data<HttpMetrics>`.
pub async fn track_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let metrics = req.app_data::<web::Data<HttpMetrics>>().cloned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method()).to_owned();
    let started = Instant::now();
    let res = next.call(req).await;
    if let Some(m) = metrics {
        let status = match &res {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        m.requests
            .get_or_create(&[
                ("method", method),
                ("route", route.clone()),
                ("status", status.to_string()),
            ])
            .inc();
        m.latency
            .get_or_create(&[("route", route)])
            .observe(started.elapsed().as_secs_f64());
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::middleware::from_fn;
    use actix_web::{test, App, HttpResponse};

    #[actix_web::test]
    async fn made_up_methods_share_one_label_so_clients_cannot_grow_the_metrics() {
        let metrics = Metrics::new();
        let http = web::Data::new(HttpMetrics::new(&metrics));
        let app = test::init_service(
            App::new()
                .wrap(from_fn(track_requests))
                .app_data(http)
                .default_service(web::to(HttpResponse::NotFound)),
        )
        .await;
        for method in ["GET", "BREW", "WHEN", "X-1", "PURGE"] {
            let req = test::TestRequest::default()
                .method(actix_web::http::Method::from_bytes(method.as_bytes()).unwrap())
                .uri("/anything")
                .to_request();
            test::call_service(&app, req).await;
        }
        let text = metrics.render();
        let methods: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("http_requests_total{"))
            .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(methods, ["GET", "other"].into(), "{text}");
        assert!(
            text.contains(r#"method="other""#) && text.contains("} 4"),
            "{text}"
        );
    }
}
