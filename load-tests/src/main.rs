//! load-tests: the instrument by which the platform's speed and correctness are judged.
//!
//! - `run`: orders through the public API, closed or open loop, with shares of failing and
//!   duplicate orders; throughput, latency percentiles (HDR), outcomes, each service's CPU per
//!   order and peak memory; `--out` JSON; `--profile DIR` flame graphs of the four services
//!   over the measured window.
//! - `audit`: docs/design.md §5 across the four services; exits 1 on any violation.
//! - `baseline`: the same writes in one local transaction on one database: the price of
//!   distribution is `run` ÷ `baseline`, measured side by side.
//! - `compare`: `run` and `baseline` alternately, several rounds, medians and their ratio.
//! - `chaos`: a platform of its own, SIGKILLed and restarted service by service under load, then
//!   audited.
//! - `participant`, `coordinator`: one binary at a time, to see where the time goes.
//!
//! Exit codes: 0 fine, 1 an invariant or exactly-once violation, 2 could not measure (bad
//! arguments, a service unreachable).

mod baseline;
mod bench;
mod chaos;
mod compare;
mod costs;
mod error;
mod measure;
mod profile;
mod run;
mod target;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    about = "Measure and audit the tcc-pay platform on this machine",
    after_help = "Exit status: 0 measured and correct; 1 an invariant or exactly-once violation \
                  (the report says which); 2 could not measure (bad arguments, a service \
                  unreachable, a binary or PostgreSQL missing)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Orders through the public API of a running platform.
    Run(run::RunArgs),
    /// Check docs/design.md §5 across the four services of a running platform.
    Audit(AuditArgs),
    /// The same business writes as one local transaction on one database.
    Baseline(baseline::BaselineArgs),
    /// `run` and `baseline` in alternation, side by side: medians and the ratio.
    Compare(compare::CompareArgs),
    /// Start a platform, run orders while SIGKILLing and restarting services, then audit.
    Chaos(chaos::ChaosArgs),
    /// Try+confirm pairs per second against one participant binary.
    Participant(bench::ParticipantArgs),
    /// TCC global transactions per second through the coordinator binary, with three no-op
    /// participants over loopback.
    Coordinator(bench::CoordinatorArgs),
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    #[command(flatten)]
    target: target::Target,
    /// How long to wait for in-flight transactions to become terminal before judging.
    #[arg(long, value_parser = target::parse_duration, default_value = "60s")]
    settle: Duration,
    /// Write the report as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

async fn audit(args: AuditArgs) -> Result<bool, error::LoadError> {
    let report = audit::run(&args.target.endpoints()?, args.settle).await?;
    println!("{report}");
    if let Some(out) = &args.out {
        error::write_json(out, &report)?;
    }
    Ok(report.ok)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let verdict = match cli.command {
        Command::Run(args) => run::run(args).await.map(|r| r.exactly_once()),
        Command::Audit(args) => audit(args).await,
        Command::Baseline(args) => baseline::baseline(args).await.map(|r| r.passed()),
        Command::Compare(args) => compare::compare(args).await,
        Command::Chaos(args) => chaos::chaos(args).await,
        Command::Participant(args) => bench::participant(args).await.map(|()| true),
        Command::Coordinator(args) => bench::coordinator(args).await.map(|()| true),
    };
    match verdict {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("load-tests: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of every command a person runs says what it does (`--help` is the manual).
    #[test]
    fn every_flag_of_every_command_has_a_help_text() {
        let missing = testkit::cli::arguments_without_help(super::Cli::command());
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
