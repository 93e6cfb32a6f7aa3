//! `compare`: the price of distribution, measured the way the project quotes figures — side by
//! side in one session, medians of alternating rounds. Each round runs `baseline` (one local
//! transaction per order, on a fresh database of the given kind) and then `run` against the
//! running platform, at the same concurrency and for the same time.

use crate::baseline::{self, BaselineArgs};
use crate::bench::Backend;
use crate::error::{write_json, LoadError};
use crate::run::{self, RunArgs};
use crate::target::{parse_duration, Target};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub target: Target,
    /// The platform's database kind; the baseline uses the same (PostgreSQL on DATABASE_URL's
    /// server, or a throwaway local cluster).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Orders (and baseline transactions) in flight at once, closed loop, on both sides.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u64,
    /// Each side's measured time per round.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Rounds of (platform, baseline) side by side; the ratio is the median of the rounds'.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Write the comparison as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub async fn compare(args: CompareArgs) -> Result<bool, LoadError> {
    if matches!(args.backend, Backend::Postgres) && std::env::var_os("DATABASE_URL").is_none() {
        return Err(LoadError::Args(
            "set DATABASE_URL to the platform's PostgreSQL server, so that both sides \
             commit to the same server with the same settings"
                .into(),
        ));
    }
    let (mut tcc, mut local) = (Vec::new(), Vec::new());
    let mut ok = true;
    for round in 1..=args.rounds.max(1) {
        let base = baseline::baseline(BaselineArgs {
            backend: args.backend,
            database_url: None,
            concurrency: args.concurrency,
            duration: args.duration,
            warmup: Duration::from_secs(1),
            users: 64,
            synchronous: "full".into(),
            max_connections: 16,
            out: None,
        })
        .await?;
        ok &= base.passed();
        let report = run::run(RunArgs {
            target: args.target.clone(),
            concurrency: Some(args.concurrency),
            rate: None,
            duration: args.duration,
            count: None,
            warmup: Duration::from_secs(1),
            users: 64,
            merchant: "merchant".into(),
            sku: "coffee".into(),
            fail_share: 0.0,
            duplicate_share: 0.0,
            refund_share: 0.0,
            retries: 0,
            tag: None,
            max_in_flight: 4096,
            out: None,
            quiet: true,
        })
        .await?;
        ok &= report.exactly_once();
        let (t, b) = (report.orders_per_second, base.transactions_per_second);
        println!(
            "round {round}: TCC {t:.1} orders/s, baseline {b:.1} tx/s, ratio {:.3}",
            t / b
        );
        tcc.push(t);
        local.push(b);
    }
    let (t, b) = (median(tcc.clone()), median(local.clone()));
    println!(
        "median of {} rounds at concurrency {}: TCC {t:.1} orders/s, baseline {b:.1} tx/s, ratio {:.3}",
        tcc.len(),
        args.concurrency,
        t / b
    );
    if let Some(out) = &args.out {
        let report = CompareReport {
            concurrency: args.concurrency,
            seconds_per_side: args.duration.as_secs_f64(),
            tcc_orders_per_second: tcc,
            baseline_transactions_per_second: local,
            median_tcc: t,
            median_baseline: b,
            ratio: t / b,
        };
        write_json(out, &report)?;
    }
    Ok(ok)
}

/// Both sides of every round, their medians and the ratio (`--out`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CompareReport {
    pub concurrency: u64,
    pub seconds_per_side: f64,
    pub tcc_orders_per_second: Vec<f64>,
    pub baseline_transactions_per_second: Vec<f64>,
    pub median_tcc: f64,
    pub median_baseline: f64,
    /// `median_tcc / median_baseline`: the price of distribution.
    pub ratio: f64,
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
