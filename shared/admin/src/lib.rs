//! The four services' admin APIs as Rust: the bodies they accept, the summaries they serve, and
//! one typed client.
//!
//! Why a crate: the platform's demo seeding, the end-to-end tests, the load tests and the audit
//! each spelled these calls by hand (a URL, a `json!` body, a status check), four copies that had
//! to change together whenever a route or a body did. Here the services and their callers share
//! one definition: a service deserialises the same struct a caller serialises, and its audit
//! summary is the type [`audit`](../audit/index.html) judges.
//!
//! The client is deliberately small: one [`Api`] per service (base URL, admin token, a shared
//! connection pool) with typed reads, and a wrapper per service whose methods are that service's
//! admin routes. No retries: a seeding step that fails is reported with the service, the path and
//! what came back, and the caller decides.

pub mod whole;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Where the four services answer, and their admin tokens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub coordinator: String,
    pub order: String,
    pub payment: String,
    pub inventory: String,
    pub tokens: Tokens,
}

/// The admin token of each service: one each in a deployment (compose), one shared by the
/// four in the one-command dev platform.
#[derive(Clone)]
pub struct Tokens {
    pub coordinator: String,
    pub order: String,
    pub payment: String,
    pub inventory: String,
}

impl Tokens {
    /// The same token for the four services (the dev platform's).
    pub fn same(token: impl Into<String>) -> Tokens {
        let token = token.into();
        Tokens {
            coordinator: token.clone(),
            order: token.clone(),
            payment: token.clone(),
            inventory: token,
        }
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(***)")
    }
}

/// Why an admin call did not give what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{service} did not answer {path}: {detail}")]
    Unreachable {
        service: &'static str,
        path: String,
        /// The error with its causes ("connection refused" is three levels down in reqwest).
        detail: String,
    },
    #[error("{service} answered {path} with {status}: {body}")]
    Refused {
        service: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{service} answered {path} with an unexpected body: {detail}")]
    Unreadable {
        service: &'static str,
        path: String,
        detail: String,
    },
}

// ---- what the services accept ----

/// `PUT /admin/accounts/{id}`: creates the account with this opening balance (recorded as its
/// first deposit); an existing account is left as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewAccount {
    /// The opening balance in cents (default 0).
    #[serde(default)]
    #[serde(deserialize_with = "whole::number")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub available: i64,
}

/// `POST /admin/accounts/{id}/deposits`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deposit {
    /// Cents.
    #[serde(deserialize_with = "whole::number")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
}

/// `PUT /admin/skus/{id}`: creates the SKU with this opening stock (recorded as its first
/// restock); an existing SKU is left as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewSku {
    /// The opening stock (default 0).
    #[serde(default)]
    #[serde(deserialize_with = "whole::number")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub available: i64,
}

/// `POST /admin/skus/{id}/restocks`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Restock {
    #[serde(deserialize_with = "whole::number")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub quantity: i64,
}

/// `PUT /admin/catalog/{sku}`: what the public API sells the SKU as, and at what price (cents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogItem {
    /// What the public API sells it as: 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, example = "Vinyl record")]
    pub name: String,
    /// Cents.
    #[serde(deserialize_with = "whole::number")]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64, example = 2500)]
    pub price: i64,
}

// ---- what the services answer ----

/// A payment-svc account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Account {
    pub id: String,
    pub available: i64,
    pub frozen: i64,
}

/// An inventory-svc SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sku {
    pub id: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

/// payment-svc's `GET /admin/audit`: the money invariants of docs/design.md §5 as that service sees
/// them, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentAudit {
    #[serde(default)]
    pub accounts: i64,
    pub available: i64,
    pub frozen: i64,
    pub deposited: i64,
    /// Money in holds still `frozen`: must equal `frozen`.
    pub held: i64,
    /// Room reserved on merchants for credits on their way (not money).
    #[serde(default)]
    pub incoming: i64,
    /// What the frozen holds reserved: must equal `incoming`.
    #[serde(default)]
    pub reserved: i64,
    pub negative_accounts: i64,
    /// available + frozen == deposited, frozen == held, incoming == reserved, nothing negative.
    #[serde(default)]
    pub consistent: bool,
}

/// inventory-svc's `GET /admin/audit`: the stock invariants of docs/design.md §5 as that service sees
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockAudit {
    #[serde(default)]
    pub skus: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub restocked: i64,
    /// Items in reservations still `reserved`: must equal `reserved`.
    pub held: i64,
    /// SKUs whose own available + reserved + sold differs from their restocks.
    pub unbalanced_skus: i64,
    pub negative_skus: i64,
    #[serde(default)]
    pub consistent: bool,
}

/// order-svc's `GET /admin/audit`: orders by status and the idempotency keys behind them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderAudit {
    pub pending: i64,
    pub confirmed: i64,
    pub cancelled: i64,
    /// Orders whose refund is under way, and refunded ones.
    #[serde(default)]
    pub refunding: i64,
    #[serde(default)]
    pub refunded: i64,
    /// Refunds by status (REFUNDING, REFUNDED, FAILED).
    #[serde(default)]
    pub refunds_under_way: i64,
    #[serde(default)]
    pub refunds_done: i64,
    #[serde(default)]
    pub refunds_failed: i64,
    /// Refunds no idempotency key points at: made by something other than the public API.
    #[serde(default)]
    pub refunds_without_request: i64,
    /// Idempotency keys seen by `POST /api/v1/orders`.
    pub requests: i64,
    /// Keys whose request has no stored answer yet (in flight, or interrupted and not retried).
    pub unanswered_requests: i64,
    /// Orders no idempotency key points at: created by something other than the public API.
    pub orders_without_request: i64,
    /// Orders two or more keys point at: must be 0.
    pub orders_with_several_requests: i64,
}

// ---- the client ----

/// One service's HTTP API, called with the admin token.
#[derive(Debug, Clone)]
pub struct Api {
    service: &'static str,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// `service` names it in errors ("payment"); `base` is its HTTP root URL.
    pub fn new(service: &'static str, base: impl Into<String>, token: impl Into<String>) -> Api {
        Api::with_client(service, base, token, reqwest::Client::new())
    }

    /// As [`Api::new`], on a connection pool shared with other APIs.
    pub fn with_client(
        service: &'static str,
        base: impl Into<String>,
        token: impl Into<String>,
        http: reqwest::Client,
    ) -> Api {
        Api {
            service,
            base: base.into().trim_end_matches('/').to_owned(),
            token: token.into(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, the answer read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call(reqwest::Method::GET, path, None::<&()>).await
    }

    /// `PUT path` with `body`.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, AdminError> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// `POST path` with `body`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, AdminError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// `DELETE path`, the answer read as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, AdminError> {
        self.call(reqwest::Method::DELETE, path, None::<&()>).await
    }

    /// `GET path`, the answer's bytes as they are (a profile, a picture), waiting up to
    /// `timeout` for them.
    pub async fn get_bytes(&self, path: &str, timeout: Duration) -> Result<Vec<u8>, AdminError> {
        self.send(reqwest::Method::GET, path, None::<&()>, timeout)
            .await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AdminError> {
        let bytes = self
            .send(method, path, body, Duration::from_secs(30))
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| AdminError::Unreadable {
            service: self.service,
            path: path.into(),
            detail: e.to_string(),
        })
    }

    /// Sends the request with the admin token; a 2xx answer's body, or why there is none.
    async fn send<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Vec<u8>, AdminError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |e: reqwest::Error| AdminError::Unreachable {
            service: self.service,
            path: path.into(),
            detail: with_causes(&e),
        };
        let res = req.send().await.map_err(unreachable)?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(AdminError::Refused {
                service: self.service,
                path: path.into(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        Ok(bytes.to_vec())
    }

    /// Every row of a keyset-paged listing: `first` is the path of the first page (with its
    /// query), each page holds its rows in `rows` and the next cursor in `next`, passed back as
    /// the `cursor` query parameter.
    pub async fn pages<T: DeserializeOwned>(
        &self,
        first: &str,
        cursor: &str,
        rows: &str,
        next: &str,
    ) -> Result<Vec<T>, AdminError> {
        let mut all = Vec::new();
        let mut path = first.to_owned();
        loop {
            let mut page: serde_json::Value = self.get(&path).await?;
            let got: Vec<T> =
                serde_json::from_value(page[rows].take()).map_err(|e| AdminError::Unreadable {
                    service: self.service,
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            all.extend(got);
            match page[next].as_str() {
                Some(n) => path = format!("{first}&{cursor}={}", encode(n)),
                None => return Ok(all),
            }
        }
    }
}

/// payment-svc's admin routes.
#[derive(Debug, Clone)]
pub struct Payment(pub Api);

impl Payment {
    /// Creates the account with an opening balance, or leaves an existing one as it is.
    pub async fn open_account(&self, id: &str, available: i64) -> Result<Account, AdminError> {
        self.0
            .put(&format!("/admin/accounts/{id}"), &NewAccount { available })
            .await
    }

    pub async fn deposit(&self, id: &str, amount: i64) -> Result<Account, AdminError> {
        self.0
            .post(
                &format!("/admin/accounts/{id}/deposits"),
                &Deposit { amount },
            )
            .await
    }

    /// Money out of `id`'s available balance (a merchant's payout).
    pub async fn payout(&self, id: &str, amount: i64) -> Result<Account, AdminError> {
        self.0
            .post(
                &format!("/admin/accounts/{id}/payouts"),
                &Deposit { amount },
            )
            .await
    }

    pub async fn account(&self, id: &str) -> Result<Account, AdminError> {
        self.0.get(&format!("/admin/accounts/{id}")).await
    }

    pub async fn audit(&self) -> Result<PaymentAudit, AdminError> {
        self.0.get("/admin/audit").await
    }
}

/// inventory-svc's admin routes.
#[derive(Debug, Clone)]
pub struct Inventory(pub Api);

impl Inventory {
    /// Creates the SKU with an opening stock, or leaves an existing one as it is.
    pub async fn open_sku(&self, sku: &str, available: i64) -> Result<Sku, AdminError> {
        self.0
            .put(&format!("/admin/skus/{sku}"), &NewSku { available })
            .await
    }

    pub async fn restock(&self, sku: &str, quantity: i64) -> Result<Sku, AdminError> {
        self.0
            .post(
                &format!("/admin/skus/{sku}/restocks"),
                &Restock { quantity },
            )
            .await
    }

    pub async fn sku(&self, sku: &str) -> Result<Sku, AdminError> {
        self.0.get(&format!("/admin/skus/{sku}")).await
    }

    pub async fn audit(&self) -> Result<StockAudit, AdminError> {
        self.0.get("/admin/audit").await
    }
}

/// order-svc's admin routes.
#[derive(Debug, Clone)]
pub struct Order(pub Api);

impl Order {
    /// Lists `sku` in the catalog (or changes its name and price).
    pub async fn put_catalog_item(
        &self,
        sku: &str,
        name: &str,
        price: i64,
    ) -> Result<(), AdminError> {
        let item = CatalogItem {
            name: name.into(),
            price,
        };
        self.0
            .put::<_, serde_json::Value>(&format!("/admin/catalog/{sku}"), &item)
            .await
            .map(drop)
    }

    pub async fn audit(&self) -> Result<OrderAudit, AdminError> {
        self.0.get("/admin/audit").await
    }
}

/// The four services' admin APIs on one connection pool.
#[derive(Debug, Clone)]
pub struct Admin {
    pub coordinator: Api,
    pub order: Order,
    pub payment: Payment,
    pub inventory: Inventory,
}

impl Admin {
    pub fn new(e: &Endpoints) -> Admin {
        let http = reqwest::Client::new();
        let api = |service, base: &str, token: &String| {
            Api::with_client(service, base, token.clone(), http.clone())
        };
        let t = &e.tokens;
        Admin {
            coordinator: api("coordinator", &e.coordinator, &t.coordinator),
            order: Order(api("order", &e.order, &t.order)),
            payment: Payment(api("payment", &e.payment, &t.payment)),
            inventory: Inventory(api("inventory", &e.inventory, &t.inventory)),
        }
    }
}

/// An error and its chain of causes, `: `-separated.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}

/// Percent-encodes a cursor for a query string (cursors hold `/` and branch ids).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_is_percent_encoded_for_a_query_string() {
        assert_eq!(encode("12/payment-1"), "12%2Fpayment-1");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn an_older_service_audit_without_the_newer_fields_still_reads() {
        let a: PaymentAudit = serde_json::from_str(
            r#"{"available":1,"frozen":2,"deposited":3,"held":2,"negative_accounts":0}"#,
        )
        .unwrap();
        assert_eq!((a.incoming, a.reserved, a.consistent), (0, 0, false));
    }
}
