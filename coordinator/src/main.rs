//! The coordinator binary: configuration from `CONFIG_FILE` and `COORDINATOR_*`, then serve
//! until SIGTERM or Ctrl-C.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    host::app::run_main("coordinator", |shutdown| async move {
        let config = coordinator::Config::load()?;
        coordinator::start(config, shutdown).await
    })
    .await
}
