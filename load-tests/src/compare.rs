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
    #[arg(long, default_value_t = 4, conflicts_with = "sweep")]
    pub concurrency: u64,
    /// Several concurrencies (`1,2,4,8,16`): every round measures both sides at each, and the
    /// ratio pairs each side's best (the highest median over rounds), so that neither side is
    /// judged at a concurrency that suits only the other.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub sweep: Vec<u64>,
    /// Each side's measured time per round.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Rounds of (platform, baseline) side by side; each side's figure is the median of its
    /// rounds, and the ratio that of the two.
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
    let levels = if args.sweep.is_empty() {
        vec![args.concurrency]
    } else {
        args.sweep.clone()
    };
    if levels.contains(&0) {
        return Err(LoadError::Args("a concurrency must be at least 1".into()));
    }
    let mut points: Vec<Point> = levels
        .iter()
        .map(|&concurrency| Point {
            concurrency,
            tcc_orders_per_second: vec![],
            baseline_transactions_per_second: vec![],
            p99_ms: vec![],
        })
        .collect();
    let mut ok = true;
    // Rounds outermost: each round visits every level, so a slow minute of the machine is
    // spread over all of them instead of falling on one.
    for round in 1..=args.rounds.max(1) {
        for point in &mut points {
            let c = point.concurrency;
            let base = baseline::baseline(BaselineArgs {
                backend: args.backend,
                database_url: None,
                concurrency: c,
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
                concurrency: Some(c),
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
                profile: None,
            })
            .await?;
            ok &= report.exactly_once();
            let (t, b) = (report.orders_per_second, base.transactions_per_second);
            let p99 = report.latency_ms.as_ref().map_or(f64::NAN, |l| l.p99);
            println!(
                "round {round}, concurrency {c}: TCC {t:.1} orders/s (p99 {p99:.1} ms), baseline {b:.1} tx/s, ratio {:.3}",
                t / b
            );
            point.tcc_orders_per_second.push(t);
            point.baseline_transactions_per_second.push(b);
            point.p99_ms.push(p99);
        }
    }
    let report = CompareReport::of(args.duration, points);
    for p in &report.points {
        println!(
            "concurrency {:>3}: TCC {:.1} orders/s, baseline {:.1} tx/s (medians of {} rounds)",
            p.concurrency,
            median(p.tcc_orders_per_second.clone()),
            median(p.baseline_transactions_per_second.clone()),
            p.tcc_orders_per_second.len()
        );
    }
    println!(
        "best medians: TCC {:.1} orders/s (concurrency {}), baseline {:.1} tx/s (concurrency {}), ratio {:.3}",
        report.median_tcc,
        report.tcc_concurrency,
        report.median_baseline,
        report.baseline_concurrency,
        report.ratio
    );
    if let Some(out) = &args.out {
        write_json(out, &report)?;
    }
    Ok(ok)
}

/// One concurrency's rounds, both sides.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Point {
    pub concurrency: u64,
    pub tcc_orders_per_second: Vec<f64>,
    pub baseline_transactions_per_second: Vec<f64>,
    /// The platform's p99 latency of each round (closed loop: at saturation, not at half).
    pub p99_ms: Vec<f64>,
}

/// Every round of every concurrency, each side's best median and the ratio (`--out`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CompareReport {
    pub seconds_per_side: f64,
    pub points: Vec<Point>,
    /// The highest of the TCC medians, and where.
    pub median_tcc: f64,
    pub tcc_concurrency: u64,
    /// The highest of the baseline medians, and where.
    pub median_baseline: f64,
    pub baseline_concurrency: u64,
    /// `median_tcc / median_baseline`: the price of distribution.
    pub ratio: f64,
}

impl CompareReport {
    /// Pairs each side's best median (over rounds) across the concurrencies.
    fn of(duration: Duration, points: Vec<Point>) -> CompareReport {
        let best = |side: fn(&Point) -> &Vec<f64>| {
            points
                .iter()
                .map(|p| (median(side(p).clone()), p.concurrency))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or((f64::NAN, 0))
        };
        let (median_tcc, tcc_concurrency) = best(|p| &p.tcc_orders_per_second);
        let (median_baseline, baseline_concurrency) = best(|p| &p.baseline_transactions_per_second);
        CompareReport {
            seconds_per_side: duration.as_secs_f64(),
            median_tcc,
            tcc_concurrency,
            median_baseline,
            baseline_concurrency,
            ratio: median_tcc / median_baseline,
            points,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_pairs_each_sides_best_median_wherever_it_is() {
        let point = |c, tcc: &[f64], base: &[f64]| Point {
            concurrency: c,
            tcc_orders_per_second: tcc.to_vec(),
            baseline_transactions_per_second: base.to_vec(),
            p99_ms: vec![1.0; tcc.len()],
        };
        // TCC is best at 8 (one lucky round at 2 does not count: medians), the baseline at 2.
        let report = CompareReport::of(
            Duration::from_secs(10),
            vec![
                point(2, &[50.0, 400.0, 60.0], &[900.0, 1000.0, 950.0]),
                point(8, &[200.0, 210.0, 190.0], &[700.0, 720.0, 710.0]),
            ],
        );
        assert_eq!((report.median_tcc, report.tcc_concurrency), (200.0, 8));
        assert_eq!(
            (report.median_baseline, report.baseline_concurrency),
            (950.0, 2)
        );
        assert!((report.ratio - 200.0 / 950.0).abs() < 1e-12);
    }

    #[test]
    fn the_median_is_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
