//! The four services as real processes (`platform serve <service>`), each on its own fresh
//! database of one kind, on free ports, tuned for tests: the coordinator recovers every 50 ms with
//! a 3 s lease and short retry delays, node id leases last 1 s (a restart waits at most that),
//! and order-svc waits at most 3 s for a decision. The
//! end-to-end tests and `load-tests chaos` start it; they kill and restart its services.

use crate::{free_port, temp_dir, Service, ServiceSpec, TestDb};
use std::path::Path;

/// The four services, by name: `coordinator`, `order`, `payment`, `inventory`.
pub const SERVICES: [&str; 4] = ["coordinator", "order", "payment", "inventory"];

#[derive(Debug, Clone)]
pub struct PlatformOptions {
    pub admin_token: String,
    pub jwt_secret: String,
    /// An OTLP endpoint every service exports its spans to.
    pub otlp: Option<String>,
    /// `RUST_LOG` of the services.
    pub log: String,
    /// More environment for every service (each reads its own prefix).
    pub env: Vec<(String, String)>,
}

impl PlatformOptions {
    pub fn new(admin_token: &str, jwt_secret: &str) -> PlatformOptions {
        PlatformOptions {
            admin_token: admin_token.into(),
            jwt_secret: jwt_secret.into(),
            otlp: None,
            log: "warn".into(),
            env: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Platform {
    pub coordinator: Service,
    pub order: Service,
    pub payment: Service,
    pub inventory: Service,
    /// HTTP base URL per service name.
    pub urls: std::collections::HashMap<&'static str, String>,
    /// gRPC endpoint per service name.
    pub grpc_urls: std::collections::HashMap<&'static str, String>,
    /// The databases, in [`SERVICES`] order.
    pub dbs: Vec<TestDb>,
    pub dir: tempfile::TempDir,
    admin_token: String,
}

impl Platform {
    /// Starts the four services from the `platform` binary at `bin`; `first` is one fresh
    /// database, the other three are its siblings (same kind, same server).
    pub async fn start(
        bin: &Path,
        first: TestDb,
        o: &PlatformOptions,
    ) -> Result<Platform, crate::process::StartError> {
        let dir = temp_dir("platform-");
        let dbs = vec![
            first.sibling().await,
            first.sibling().await,
            first.sibling().await,
            first,
        ];
        let ports: Vec<(u16, u16)> = (0..4).map(|_| (free_port(), free_port())).collect();
        let spec = |i: usize, prefix: &str| {
            let (name, (http, grpc)) = (SERVICES[i], ports[i]);
            let mut s = ServiceSpec::new(name, bin, dir.path())
                .arg("serve")
                .arg(name)
                .env(format!("{prefix}HTTP_ADDR"), format!("127.0.0.1:{http}"))
                .env(format!("{prefix}GRPC_ADDR"), format!("127.0.0.1:{grpc}"))
                .env(format!("{prefix}DATABASE_URL"), dbs[i].url())
                .env(format!("{prefix}DATA_DIR"), dir.path().join(name))
                .env(format!("{prefix}ADMIN_TOKEN"), &o.admin_token)
                // One dev CA for the four (their data folders differ).
                .env(format!("{prefix}TLS__DIR"), dir.path().join("tls"))
                .env("RUST_LOG", &o.log)
                .env("LOG_FORMAT", "json")
                .ready_url(format!("http://127.0.0.1:{http}/readyz"));
            for (k, v) in &o.env {
                s = s.env(k, v);
            }
            match &o.otlp {
                Some(endpoint) => s.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                None => s,
            }
        };
        let grpc = |i: usize| format!("http://127.0.0.1:{}", ports[i].1);
        let coordinator = Service::start(
            spec(0, "COORDINATOR_")
                .env("COORDINATOR_PARTICIPANTS__ORDER", grpc(1))
                .env("COORDINATOR_PARTICIPANTS__PAYMENT", grpc(2))
                .env("COORDINATOR_PARTICIPANTS__INVENTORY", grpc(3))
                .env("COORDINATOR_LEASE_MS", "3000")
                .env("COORDINATOR_RECOVERY_INTERVAL_MS", "50")
                .env("COORDINATOR_RETRY_INITIAL_MS", "20")
                .env("COORDINATOR_RETRY_MAX_MS", "300")
                .env("COORDINATOR_NODE_LEASE_MS", "1000"),
        )
        .await?;
        let order = Service::start(
            spec(1, "ORDER_")
                .env("ORDER_JWT__SECRET", &o.jwt_secret)
                .env("ORDER_API__COORDINATOR_URL", grpc(0))
                .env("ORDER_API__ORDER_URL", grpc(1))
                .env("ORDER_API__PAYMENT_URL", grpc(2))
                .env("ORDER_API__INVENTORY_URL", grpc(3))
                .env("ORDER_API__WAIT_MS", "3000")
                .env("ORDER_API__TRANSACTION_TIMEOUT_MS", "3000")
                .env("ORDER_API__NODE_LEASE_MS", "1000"),
        )
        .await?;
        let payment = Service::start(spec(2, "PAYMENT_")).await?;
        let inventory = Service::start(spec(3, "INVENTORY_")).await?;
        let urls = (0..4)
            .map(|i| (SERVICES[i], format!("http://127.0.0.1:{}", ports[i].0)))
            .collect();
        let grpc_urls = (0..4).map(|i| (SERVICES[i], grpc(i))).collect();
        Ok(Platform {
            grpc_urls,
            coordinator,
            order,
            payment,
            inventory,
            urls,
            dbs,
            dir,
            admin_token: o.admin_token.clone(),
        })
    }

    /// Where the four services answer, with the admin token: for [`admin::Admin`] and the audit.
    pub fn endpoints(&self) -> admin::Endpoints {
        admin::Endpoints {
            coordinator: self.urls["coordinator"].clone(),
            order: self.urls["order"].clone(),
            payment: self.urls["payment"].clone(),
            inventory: self.urls["inventory"].clone(),
            tokens: admin::Tokens::same(&self.admin_token),
        }
    }

    /// The service of that name (one of [`SERVICES`]).
    pub fn service(&mut self, name: &str) -> Option<&mut Service> {
        match name {
            "coordinator" => Some(&mut self.coordinator),
            "order" => Some(&mut self.order),
            "payment" => Some(&mut self.payment),
            "inventory" => Some(&mut self.inventory),
            _ => None,
        }
    }
}
