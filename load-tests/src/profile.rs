//! `run --profile DIR`: a flame graph of each of the four services over the measured window,
//! from their `/debug/pprof/profile` (behind each one's admin token), written as
//! `DIR/<service>.svg`. The profiles run while the load does, so they show where an order's
//! CPU goes in each process; sampling costs little (99 samples a second per process).

use crate::error::LoadError;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest profile a service takes (its own limit).
const MAX_SECONDS: u64 = 60;

/// Profiles the four services for `window` (whole seconds, 1 to 60) at once and writes their
/// flame graphs into `dir`; returns the files written.
pub async fn take(
    endpoints: &admin::Endpoints,
    dir: &Path,
    window: Duration,
) -> Result<Vec<PathBuf>, LoadError> {
    let seconds = window.as_secs().clamp(1, MAX_SECONDS);
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let http = reqwest::Client::new();
    let t = &endpoints.tokens;
    let services = [
        ("coordinator", &endpoints.coordinator, &t.coordinator),
        ("order-svc", &endpoints.order, &t.order),
        ("payment-svc", &endpoints.payment, &t.payment),
        ("inventory-svc", &endpoints.inventory, &t.inventory),
    ];
    let takes = services.map(|(service, base, token)| {
        let http = http.clone();
        async move {
            let url = format!(
                "{}/debug/pprof/profile?seconds={seconds}&format=svg",
                base.trim_end_matches('/')
            );
            let failed = |why: String| LoadError::Platform(format!("{service}'s profile: {why}"));
            let answer = http
                .get(&url)
                .bearer_auth(token)
                // Sampling, then symbolising and drawing.
                .timeout(Duration::from_secs(seconds + 60))
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let status = answer.status();
            let body = answer.bytes().await.map_err(|e| failed(e.to_string()))?;
            if !status.is_success() {
                return Err(failed(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            let file = dir.join(format!("{service}.svg"));
            std::fs::write(&file, &body).map_err(|source| LoadError::Io {
                what: format!("writing {}", file.display()),
                source,
            })?;
            Ok(file)
        }
    });
    futures::future::try_join_all(takes).await
}
