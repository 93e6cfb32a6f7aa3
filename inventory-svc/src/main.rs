//! The inventory-svc binary: configuration from `CONFIG_FILE` and `INVENTORY_*`, then serve
//! until SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    host::app::run_main("inventory-svc", |shutdown| async move {
        let config = inventory_svc::load_config()?;
        inventory_svc::start(config, shutdown).await
    })
    .await
}
