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
    admin: &admin::Admin,
    dir: &Path,
    window: Duration,
) -> Result<Vec<PathBuf>, LoadError> {
    let seconds = window.as_secs().clamp(1, MAX_SECONDS);
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let path = format!("/debug/pprof/profile?seconds={seconds}&format=svg");
    let services = [
        ("coordinator", &admin.coordinator),
        ("order-svc", &admin.order.0),
        ("payment-svc", &admin.payment.0),
        ("inventory-svc", &admin.inventory.0),
    ];
    let takes = services.map(|(service, api)| {
        let path = &path;
        async move {
            // Sampling, then symbolising and drawing.
            let svg = api
                .get_bytes(path, Duration::from_secs(seconds + 60))
                .await?;
            let file = dir.join(format!("{service}.svg"));
            std::fs::write(&file, svg).map_err(|source| LoadError::Io {
                what: format!("writing {}", file.display()),
                source,
            })?;
            Ok(file)
        }
    });
    futures::future::try_join_all(takes).await
}
