//! Prometheus metrics: one registry per process, rendered at `/metrics`, plus HTTP request
//! metrics recorded by [`track_requests`].

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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
    /// A registry that already holds the process's own metrics ([`ProcessCollector`]).
    pub fn new() -> Self {
        let metrics = Self::default();
        metrics.register(|r| r.register_collector(Box::new(ProcessCollector)));
        metrics
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

/// `process_cpu_seconds_total` (user and system CPU time, all threads) and
/// `process_peak_resident_memory_bytes`, read from `getrusage` at each scrape: what a load
/// test divides by the orders it sent to see which service spends the CPU, and the figure the
/// memory goal (< 50 MB under load) is judged on. Nothing is kept between scrapes.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use nix::sys::resource::{getrusage, UsageWho};
        use nix::sys::time::TimeValLike;
        // A failed getrusage leaves the two metrics out rather than failing the scrape.
        let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
            return Ok(());
        };
        let cpu_us = usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
        let cpu = ConstCounter::new(cpu_us as f64 / 1e6);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time this process has used, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        // Linux and the BSDs count ru_maxrss in KiB, macOS in bytes.
        let scale = if cfg!(target_os = "macos") {
            1.0
        } else {
            1024.0
        };
        let peak = ConstGauge::new(usage.max_rss() as f64 * scale);
        peak.encode(encoder.encode_descriptor(
            "process_peak_resident_memory_bytes",
            "The most resident memory this process has held, in bytes",
            None,
            peak.metric_type(),
        )?)?;
        Ok(())
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
    async fn every_registry_reports_the_process_s_cpu_time_as_it_grows_and_its_peak_memory() {
        let metrics = Metrics::new();
        let value = |name: &str| {
            let text = metrics.render();
            text.lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        };
        let before = value("process_cpu_seconds_total");
        let started = Instant::now();
        let mut x = 0_u64;
        while value("process_cpu_seconds_total") <= before {
            for i in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "10 s of spinning never moved the CPU counter from {before}"
            );
        }
        // A test binary holds well over a megabyte.
        assert!(value("process_peak_resident_memory_bytes") > 1e6);
    }

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
