//! The order-svc binary: configuration from `CONFIG_FILE` and `ORDER_*`, then serve
//! until SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    host::app::run_main("order-svc", |shutdown| async move {
        let config = order_svc::load_config()?;
        order_svc::start(config, shutdown).await
    })
    .await
}
