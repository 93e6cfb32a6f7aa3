//! A minimal HTTP service used by testkit's own tests of the process helpers: it becomes ready
//! after `READY_DELAY_MS`, answers `/readyz` and `/pid`, and exits 0 on SIGTERM.
use actix_web::{web, App, HttpResponse, HttpServer};
use std::time::{Duration, Instant};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let delay = Duration::from_millis(
        std::env::var("READY_DELAY_MS")
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0),
    );
    let started = Instant::now();
    println!(
        "ready-server pid {} starting on port {port}",
        std::process::id()
    );
    HttpServer::new(move || {
        App::new()
            .route(
                "/readyz",
                web::get().to(move || async move {
                    if started.elapsed() >= delay {
                        HttpResponse::Ok().body("ready")
                    } else {
                        HttpResponse::ServiceUnavailable().body("starting")
                    }
                }),
            )
            .route(
                "/pid",
                web::get().to(|| async { HttpResponse::Ok().body(std::process::id().to_string()) }),
            )
    })
    .workers(1)
    .bind(("127.0.0.1", port))?
    .run()
    .await
}
