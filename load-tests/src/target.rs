//! The platform under test: where its four services answer and the secrets to talk to them. By
//! default the one-command platform on this machine (`cargo run --release --bin platform`), whose
//! admin token and JWT secret are read from its data folder.

use crate::error::LoadError;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// order-svc's HTTP address (the public API).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub order_url: String,
    /// payment-svc's HTTP address (its admin API: accounts, the audit).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub payment_url: String,
    /// inventory-svc's HTTP address (its admin API: stock, the audit).
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    pub inventory_url: String,
    /// The coordinator's HTTP address (transactions, for the audit).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub coordinator_url: String,
    /// Where the secrets are read from unless given below: the platform's data folder
    /// (`admin-token`, `order.jwt-secret`), or compose's `compose/secrets`
    /// (`<service>-admin-token`, `jwt-secret`).
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// An admin bearer token the four services share (the dev platform's).
    #[arg(long)]
    pub admin_token: Option<String>,
    /// Each service's own token (set by code that started the services).
    #[arg(skip)]
    pub tokens: Option<admin::Tokens>,
    /// order-svc's HS256 secret, to sign the buyers' tokens.
    #[arg(long)]
    pub jwt_secret: Option<String>,
}

impl Target {
    fn secret(
        &self,
        given: &Option<String>,
        file: &str,
        flag: &'static str,
    ) -> Result<String, LoadError> {
        if let Some(s) = given {
            return Ok(s.clone());
        }
        let path = self.data.join(file);
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| LoadError::Secret { flag, path, source })
    }

    /// The services' admin tokens: given, one per service in the folder (compose's
    /// `<service>-admin-token`), or the one the dev platform's services share.
    pub fn tokens(&self) -> Result<admin::Tokens, LoadError> {
        if let Some(tokens) = &self.tokens {
            return Ok(tokens.clone());
        }
        if self.admin_token.is_none() && self.data.join("order-admin-token").exists() {
            let own = |s: &str| self.secret(&None, &format!("{s}-admin-token"), "--admin-token");
            return Ok(admin::Tokens {
                coordinator: own("coordinator")?,
                order: own("order")?,
                payment: own("payment")?,
                inventory: own("inventory")?,
            });
        }
        self.secret(&self.admin_token, "admin-token", "--admin-token")
            .map(admin::Tokens::same)
    }

    pub fn jwt_secret(&self) -> Result<String, LoadError> {
        let file = if self.data.join("jwt-secret").exists() {
            "jwt-secret"
        } else {
            "order.jwt-secret"
        };
        self.secret(&self.jwt_secret, file, "--jwt-secret")
    }

    pub fn endpoints(&self) -> Result<admin::Endpoints, LoadError> {
        Ok(admin::Endpoints {
            coordinator: self.coordinator_url.clone(),
            order: self.order_url.clone(),
            payment: self.payment_url.clone(),
            inventory: self.inventory_url.clone(),
            tokens: self.tokens()?,
        })
    }

    /// The four services' admin APIs (setting up accounts, stock and prices).
    pub fn admin(&self) -> Result<admin::Admin, LoadError> {
        Ok(admin::Admin::new(&self.endpoints()?))
    }
}

/// `30s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 2m or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
