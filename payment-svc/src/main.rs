//! The payment-svc binary: configuration from `CONFIG_FILE` and `PAYMENT_*`, then serve until
//! SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    host::app::run_main("payment-svc", |shutdown| async move {
        let config = payment_svc::load_config()?;
        payment_svc::start(config, shutdown).await
    })
    .await
}
