//! The order-svc binary: configuration from `CONFIG_FILE` and `ORDER_*`, then serve until
//! SIGTERM or Ctrl-C. `order-svc token --sub alice` prints a token for the public API, signed
//! with the configured (or dev) secret.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "tcc-pay order service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print an access token for the public API (dev and tests).
    Token {
        /// The user the token is for.
        #[arg(long)]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Token { sub, ttl_secs }) = cli.command {
        return token(&sub, ttl_secs);
    }
    host::app::run_main("order-svc", |shutdown| async move {
        let config = order_svc::load_config()?;
        order_svc::start(config, shutdown).await
    })
    .await
}

fn token(sub: &str, ttl_secs: u64) -> std::process::ExitCode {
    let result = order_svc::load_config().and_then(|config| {
        order_svc::mint_token(&config, sub, std::time::Duration::from_secs(ttl_secs))
    });
    match result {
        Ok(token) => {
            println!("{token}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("order-svc token: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
