//! Configuration: compiled-in defaults that run locally, then a TOML file (`CONFIG_FILE`), then
//! environment variables with the service's prefix (`PAYMENT_HTTP_ADDR=…`; nested keys with
//! `__`, e.g. `PAYMENT_DB__MAX_CONNECTIONS=32`).

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Settings every service has; embed with `#[serde(flatten)]`. Its `Debug` hides the admin
/// token and the database password.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct CommonConfig {
    /// HTTP listen address (admin, reads, health, metrics).
    pub http_addr: String,
    /// gRPC listen address (participant contract or coordinator API).
    pub grpc_addr: String,
    /// `sqlite://data/<service>.db` or `postgres://…`.
    pub database_url: String,
    /// Folder for SQLite files and generated dev secrets.
    pub data_dir: PathBuf,
    /// Production mode refuses dev conveniences (generated secrets).
    pub production: bool,
    /// Bearer token for admin endpoints; unset: generated into `data_dir` on first start
    /// (refused in production mode).
    pub admin_token: Option<String>,
    pub db: DbSettings,
    /// Mutual TLS on gRPC (`TLS__MODE`, `TLS__DIR`, `TLS__CA_FILE`, `TLS__CERT_FILE`,
    /// `TLS__KEY_FILE`; see the `trust` crate).
    #[serde(default)]
    pub tls: trust::TlsSettings,
    /// Seconds to let in-flight requests finish after SIGTERM.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DbSettings {
    pub max_connections: u32,
    /// SQLite only: `full` (default) or `normal`.
    pub synchronous: String,
    /// PostgreSQL only: the server ends a session silent this long inside a transaction (a
    /// frozen process), releasing its row locks; 0 turns it off.
    #[serde(default = "default_idle_in_transaction_ms")]
    pub idle_in_transaction_timeout_ms: u64,
}

fn default_idle_in_transaction_ms() -> u64 {
    5_000
}

impl Default for DbSettings {
    fn default() -> Self {
        DbSettings {
            max_connections: 16,
            synchronous: "full".into(),
            idle_in_transaction_timeout_ms: default_idle_in_transaction_ms(),
        }
    }
}

impl std::fmt::Debug for CommonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommonConfig")
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .field("database_url", &store::redact(&self.database_url))
            .field("data_dir", &self.data_dir)
            .field("production", &self.production)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .finish()
    }
}

impl CommonConfig {
    /// Defaults for a service called `name` listening on the given local ports.
    pub fn local(name: &str, http_port: u16, grpc_port: u16) -> Self {
        CommonConfig {
            http_addr: format!("127.0.0.1:{http_port}"),
            grpc_addr: format!("127.0.0.1:{grpc_port}"),
            database_url: format!("sqlite://data/{name}.db"),
            data_dir: PathBuf::from("data"),
            production: false,
            admin_token: None,
            db: DbSettings::default(),
            tls: trust::TlsSettings::default(),
            shutdown_grace_secs: 10,
        }
    }

    /// This service's certificates for gRPC (`role`: its name), or `None` with TLS off (dev).
    pub fn trust(&self, role: &str) -> Result<Option<trust::Trust>, trust::TrustError> {
        trust::Trust::resolve(&self.tls, &self.data_dir, self.production, role)
    }

    /// The store configuration these settings describe.
    pub fn db_config(&self) -> Result<store::DbConfig, ConfigError> {
        let mut cfg = store::DbConfig::new(self.database_url.clone());
        cfg.max_connections = self.db.max_connections;
        cfg.idle_in_transaction_timeout =
            std::time::Duration::from_millis(self.db.idle_in_transaction_timeout_ms);
        cfg.synchronous = self
            .db
            .synchronous
            .parse()
            .map_err(|e: store::StoreError| ConfigError(e.to_string()))?;
        if self.production && cfg.synchronous == store::Synchronous::Off {
            // A commit that a power cut can undo breaks every promise of the log and the barrier.
            return Err(ConfigError(
                "db.synchronous = off is refused in production mode (it loses commits on a power cut)"
                    .into(),
            ));
        }
        Ok(cfg)
    }
}

/// A dev-only secret kept in `path`: read if it exists, else generated (`<prefix>-<48 hex>`)
/// and written with mode 0600. Callers refuse this in production mode.
pub fn dev_secret(path: &std::path::Path, prefix: &str) -> Result<String, ConfigError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(existing.to_owned());
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| ConfigError(format!("create {}: {e}", dir.display())))?;
    }
    let secret = format!("{prefix}-{}", hex::encode(rand::random::<[u8; 24]>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ConfigError(format!("write {}: {e}", path.display())))?;
    writeln!(file, "{secret}").map_err(|e| ConfigError(e.to_string()))?;
    tracing::info!(path = %path.display(), "generated a dev-only secret");
    Ok(secret)
}

/// Configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Loads `T` from its defaults, the TOML file named by `CONFIG_FILE` (if set), and environment
/// variables starting with `env_prefix` (e.g. `PAYMENT_`). Production mode is on when any
/// source says so: the file, `PRODUCTION` (one switch for every service of a deployment, as
/// compose and the container tests set it) or `<PREFIX>PRODUCTION`; no source can turn it off
/// again.
pub fn load_config<T>(defaults: T, env_prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
{
    let known = Figment::from(Serialized::defaults(&defaults));
    let mut figment = Figment::from(Serialized::defaults(defaults));
    let mut given = vec![Figment::from(Env::prefixed(env_prefix).split("__"))];
    if let Ok(path) = std::env::var("CONFIG_FILE") {
        if !std::path::Path::new(&path).exists() {
            return Err(ConfigError(format!("CONFIG_FILE {path} does not exist")));
        }
        figment = figment.merge(Toml::file(&path));
        given.push(Figment::from(Toml::file(&path)));
    }
    let mut figment = figment.merge(Env::prefixed(env_prefix).split("__"));
    let known_data = known.data().map_err(|e| describe(e, env_prefix))?;
    let known = known_data
        .get(&figment::Profile::Default)
        .cloned()
        .unwrap_or_default();
    let mut read_from_files = Vec::new();
    // Lowest precedence first (the file, then the environment), so the environment's wins as
    // it does for a key set directly.
    for source in given.iter().rev() {
        // A source that cannot be read is reported by the extraction below, naming its file.
        let Ok(data) = source.data() else { continue };
        for dict in data.values() {
            for (key, file) in file_keys(&known, dict, "") {
                let value = read_secret_file(&key, &file, env_prefix)?;
                let stem = key.strip_suffix("_file").unwrap_or(&key).to_owned();
                if given.iter().any(|g| g.find_value(&stem).is_ok()) {
                    let env = format!("{env_prefix}{}", stem.replace('.', "__").to_uppercase());
                    return Err(ConfigError(format!(
                        "{stem} is set both directly and through {key} (env {env} and {env}_FILE): set one"
                    )));
                }
                figment = figment.merge(Serialized::default(&stem, value));
                read_from_files.push(key);
            }
        }
    }
    let says_production = |f: &Figment| f.extract_inner::<bool>("production").unwrap_or(false);
    if given.iter().any(says_production)
        || says_production(&Figment::from(Env::raw().only(&["PRODUCTION"])))
    {
        figment = figment.merge(Serialized::default("production", true));
    }
    let config = figment.extract::<T>().map_err(|e| {
        // `#[serde(flatten)]` loses the key of an error in the flattened part; extracting that
        // part alone finds it again.
        let e = match figment.extract::<CommonConfig>() {
            Err(common) if e.path.is_empty() => common,
            _ => e,
        };
        describe(e, env_prefix)
    })?;
    // serde ignores keys it does not know (and `flatten` cannot deny them): a misspelt key
    // would silently leave its default in force. Refused in production, a warning in dev (where
    // a shell may hold unrelated variables with the same prefix).
    let production = figment.extract_inner::<bool>("production").unwrap_or(false);
    for source in given {
        let data = source.data().map_err(|e| describe(e, env_prefix))?;
        for dict in data.values() {
            for key in unknown_keys(&known, dict, "") {
                if injected_by_an_orchestrator(&key) || read_from_files.contains(&key) {
                    continue;
                }
                let env = format!("{env_prefix}{}", key.replace('.', "__").to_uppercase());
                let message = format!("unknown configuration key {key} (env {env})");
                if production {
                    return Err(ConfigError(message));
                }
                tracing::warn!("{message}: ignored");
            }
        }
    }
    Ok(config)
}

/// The `<key>_file` entries of `given` (dotted path, file name) whose `<key>` is a known
/// setting without a `_file` setting of its own (`tls.ca_file` is a path, not an indirection):
/// the file holds the value, as orchestrators mount secrets (`ADMIN_TOKEN_FILE=/run/secrets/…`),
/// so a secret needs neither an environment variable nor a command line.
fn file_keys(
    known: &figment::value::Dict,
    given: &figment::value::Dict,
    at: &str,
) -> Vec<(String, String)> {
    use figment::value::Value;
    let mut found = Vec::new();
    for (key, value) in given {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match (known.get(key), value) {
            (Some(Value::Dict(_, k)), Value::Dict(_, g)) => {
                found.extend(file_keys(k, g, &path));
            }
            (None, Value::String(_, file)) => {
                // Text settings only: a number read from a file would be echoed by the parse
                // error, and no secret is a number.
                let stem_known = key.strip_suffix("_file").is_some_and(|stem| {
                    matches!(known.get(stem), Some(Value::String(..) | Value::Empty(..)))
                });
                if stem_known {
                    found.push((path, file.clone()));
                }
            }
            _ => {}
        }
    }
    found
}

/// A secret's value from its file: the contents without the final line break. The error names
/// the setting and the file, never the contents.
fn read_secret_file(key: &str, file: &str, env_prefix: &str) -> Result<String, ConfigError> {
    let env = format!("{env_prefix}{}", key.replace('.', "__").to_uppercase());
    let contents = std::fs::read_to_string(file)
        .map_err(|e| ConfigError(format!("{key} (env {env}): cannot read {file}: {e}")))?;
    let value = contents.strip_suffix('\n').unwrap_or(&contents);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.trim().is_empty() {
        return Err(ConfigError(format!("{key} (env {env}): {file} is empty")));
    }
    Ok(value.to_owned())
}

/// Variables an orchestrator sets for a service named like ours (Kubernetes' service links:
/// `ORDER_PORT`, `ORDER_SERVICE_HOST`, `ORDER_PORT_50051_TCP_ADDR`, …), not configuration.
fn injected_by_an_orchestrator(key: &str) -> bool {
    key == "port" || key.starts_with("port_") || key.starts_with("service_")
}

/// The keys of `given` (dotted paths) that `known` does not have. An empty table in `known`
/// is a map (`participants`): any key below it is known.
fn unknown_keys(
    known: &figment::value::Dict,
    given: &figment::value::Dict,
    at: &str,
) -> Vec<String> {
    use figment::value::Value;
    let mut unknown = Vec::new();
    for (key, value) in given {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match (known.get(key), value) {
            (None, _) => unknown.push(path),
            (Some(Value::Dict(_, k)), Value::Dict(_, g)) if !k.is_empty() => {
                unknown.extend(unknown_keys(k, g, &path));
            }
            _ => {}
        }
    }
    unknown
}

fn describe(errors: figment::Error, env_prefix: &str) -> ConfigError {
    let parts: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .map(|s| format!("{s}: "))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{source}{}", e.kind)
            } else {
                let env = format!("{env_prefix}{}", e.path.join("__").to_uppercase());
                format!("{key} (env {env}): {}", e.kind)
            }
        })
        .collect();
    ConfigError(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Svc {
        #[serde(flatten)]
        common: CommonConfig,
        merchant: String,
    }

    fn svc() -> Svc {
        Svc {
            common: CommonConfig::local("x", 1, 2),
            merchant: "merchant".into(),
        }
    }

    #[test]
    fn the_debug_output_hides_the_admin_token_and_the_database_password() {
        let mut common = CommonConfig::local("x", 1, 2);
        common.admin_token = Some("t0ken-value-0123456789".into());
        common.database_url = "postgres://tcc:pa55word-value@db:5432/tcc".into();
        let shown = format!("{common:?}");
        assert!(
            !shown.contains("t0ken-value") && !shown.contains("pa55word-value"),
            "{shown}"
        );
        assert!(shown.contains("db:5432"), "{shown}");
    }

    #[test]
    fn production_mode_refuses_sqlite_without_synchronous_commits() {
        let mut common = CommonConfig::local("x", 1, 2);
        common.db.synchronous = "off".into();
        assert!(
            common.db_config().is_ok(),
            "dev mode may trade durability for speed"
        );
        common.production = true;
        let refused = common.db_config().unwrap_err().to_string();
        assert!(
            refused.contains("synchronous = off is refused in production"),
            "{refused}"
        );
        common.db.synchronous = "normal".into();
        assert!(common.db_config().is_ok());
    }

    // figment's Jail closures return figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    #[test]
    fn production_is_on_when_any_source_says_so_and_none_can_turn_it_off() {
        figment::Jail::expect_with(|jail| {
            assert!(!load_config(svc(), "HOSTTEST_").unwrap().common.production);
            jail.set_env("PRODUCTION", "true");
            assert!(load_config(svc(), "HOSTTEST_").unwrap().common.production);
            jail.set_env("HOSTTEST_PRODUCTION", "false");
            assert!(
                load_config(svc(), "HOSTTEST_").unwrap().common.production,
                "a service's own false does not undo the deployment's true"
            );
            jail.set_env("PRODUCTION", "false");
            jail.create_file("c.toml", "production = true\n")?;
            jail.set_env("CONFIG_FILE", "c.toml");
            assert!(load_config(svc(), "HOSTTEST_").unwrap().common.production);
            Ok(())
        });
    }

    #[allow(clippy::result_large_err)]
    #[test]
    fn kubernetes_service_link_variables_are_not_taken_for_misspelt_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PRODUCTION", "true");
            jail.set_env("HOSTTEST_PORT", "tcp://10.0.0.1:50051");
            jail.set_env("HOSTTEST_SERVICE_HOST", "10.0.0.1");
            jail.set_env("HOSTTEST_PORT_50051_TCP_ADDR", "10.0.0.1");
            assert!(load_config(svc(), "HOSTTEST_").is_ok());
            Ok(())
        });
    }

    #[allow(clippy::result_large_err)]
    #[test]
    fn a_misspelt_key_is_refused_in_production_naming_it_and_only_warned_in_dev() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HOSTTEST_HTTP_ADR", "0.0.0.0:1");
            jail.set_env("HOSTTEST_DB__MAX_CONECTIONS", "3");
            assert!(load_config(svc(), "HOSTTEST_").is_ok(), "dev: a warning");
            jail.set_env("PRODUCTION", "true");
            let refused = load_config(svc(), "HOSTTEST_").unwrap_err().to_string();
            assert!(
                refused.contains("unknown configuration key")
                    && (refused.contains("HOSTTEST_HTTP_ADR")
                        || refused.contains("HOSTTEST_DB__MAX_CONECTIONS")),
                "{refused}"
            );
            Ok(())
        });
    }

    #[allow(clippy::result_large_err)]
    #[test]
    fn known_keys_nested_keys_and_a_map_s_own_keys_pass_in_production() {
        #[derive(Debug, Serialize, Deserialize)]
        struct WithMap {
            #[serde(flatten)]
            common: CommonConfig,
            participants: std::collections::BTreeMap<String, String>,
            secret: Option<String>,
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("PRODUCTION", "true");
            jail.set_env("HOSTTEST_DB__MAX_CONNECTIONS", "3");
            jail.set_env("HOSTTEST_PARTICIPANTS__PAYMENT", "http://p:1");
            jail.set_env("HOSTTEST_SECRET", "s");
            jail.create_file(
                "c.toml",
                "shutdown_grace_secs = 3\n[db]\nsynchronous = \"normal\"\n",
            )?;
            jail.set_env("CONFIG_FILE", "c.toml");
            let cfg = load_config(
                WithMap {
                    common: CommonConfig::local("x", 1, 2),
                    participants: Default::default(),
                    secret: None,
                },
                "HOSTTEST_",
            )
            .unwrap();
            assert_eq!(cfg.participants["payment"], "http://p:1");
            assert_eq!(cfg.secret.as_deref(), Some("s"));
            jail.create_file("c.toml", "shutdown_grace_sec = 3\n")?;
            let refused = load_config(
                WithMap {
                    common: CommonConfig::local("x", 1, 2),
                    participants: Default::default(),
                    secret: None,
                },
                "HOSTTEST_",
            )
            .unwrap_err()
            .to_string();
            assert!(refused.contains("shutdown_grace_sec "), "{refused}");
            Ok(())
        });
    }

    #[allow(clippy::result_large_err)]
    #[test]
    fn a_secret_is_read_from_the_file_its_file_variable_names_and_never_echoed() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PRODUCTION", "true");
            jail.create_file("token", "from-a-file-0123456789abcdef0123456789\n")?;
            jail.set_env("HOSTTEST_ADMIN_TOKEN_FILE", "token");
            jail.set_env("HOSTTEST_TLS__CA_FILE", "ca.pem");
            let cfg = load_config(svc(), "HOSTTEST_").unwrap();
            assert_eq!(
                cfg.common.admin_token.as_deref(),
                Some("from-a-file-0123456789abcdef0123456789")
            );
            assert_eq!(
                cfg.common.tls.ca_file.as_deref(),
                Some(std::path::Path::new("ca.pem")),
                "a setting whose own name ends in _file is a path, not an indirection"
            );

            jail.set_env("HOSTTEST_ADMIN_TOKEN", "also-set-directly");
            let both = load_config(svc(), "HOSTTEST_").unwrap_err().to_string();
            assert!(both.contains("set one"), "{both}");
            assert!(!both.contains("from-a-file"), "{both}");

            jail.set_env("HOSTTEST_ADMIN_TOKEN", "");
            jail.set_env("HOSTTEST_ADMIN_TOKEN_FILE", "missing");
            let missing = load_config(svc(), "HOSTTEST_").unwrap_err().to_string();
            assert!(
                missing.contains("HOSTTEST_ADMIN_TOKEN_FILE") && missing.contains("missing"),
                "{missing}"
            );

            jail.create_file("empty", "\n")?;
            jail.set_env("HOSTTEST_ADMIN_TOKEN_FILE", "empty");
            let empty = load_config(svc(), "HOSTTEST_").unwrap_err().to_string();
            assert!(empty.contains("is empty"), "{empty}");

            // The environment's file wins over the configuration file's, as for direct keys.
            std::env::remove_var("HOSTTEST_ADMIN_TOKEN");
            jail.create_file("other-token", "from-the-toml-file-0123456789abcdef0123\n")?;
            jail.create_file("c.toml", "admin_token_file = \"other-token\"\n")?;
            jail.set_env("CONFIG_FILE", "c.toml");
            jail.set_env("HOSTTEST_ADMIN_TOKEN_FILE", "token");
            let cfg = load_config(svc(), "HOSTTEST_").unwrap();
            assert_eq!(
                cfg.common.admin_token.as_deref(),
                Some("from-a-file-0123456789abcdef0123456789")
            );
            // A number is no secret: its _FILE is an unknown key (named, contents never shown).
            jail.create_file("n", "not-a-number-s3cr3t\n")?;
            jail.set_env("HOSTTEST_DB__MAX_CONNECTIONS_FILE", "n");
            let refused = load_config(svc(), "HOSTTEST_").unwrap_err().to_string();
            assert!(
                refused.contains("HOSTTEST_DB__MAX_CONNECTIONS_FILE")
                    && !refused.contains("s3cr3t"),
                "{refused}"
            );
            std::env::remove_var("HOSTTEST_DB__MAX_CONNECTIONS_FILE");
            std::env::remove_var("CONFIG_FILE");

            // The same from a configuration file.
            jail.set_env("HOSTTEST_ADMIN_TOKEN_FILE", "token");
            std::env::remove_var("HOSTTEST_ADMIN_TOKEN_FILE");
            std::env::remove_var("HOSTTEST_ADMIN_TOKEN");
            jail.create_file("c.toml", "admin_token_file = \"token\"\n")?;
            jail.set_env("CONFIG_FILE", "c.toml");
            let cfg = load_config(svc(), "HOSTTEST_").unwrap();
            assert_eq!(
                cfg.common.admin_token.as_deref(),
                Some("from-a-file-0123456789abcdef0123456789")
            );
            Ok(())
        });
    }

    #[allow(clippy::result_large_err)]
    #[test]
    fn env_overrides_defaults_including_nested_keys() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HOSTTEST_HTTP_ADDR", "0.0.0.0:9999");
            jail.set_env("HOSTTEST_DB__MAX_CONNECTIONS", "3");
            jail.set_env("HOSTTEST_MERCHANT", "shop");
            let cfg = load_config(
                Svc {
                    common: CommonConfig::local("x", 1, 2),
                    merchant: "merchant".into(),
                },
                "HOSTTEST_",
            )
            .unwrap();
            assert_eq!(cfg.common.http_addr, "0.0.0.0:9999");
            assert_eq!(cfg.common.grpc_addr, "127.0.0.1:2");
            assert_eq!(cfg.common.db.max_connections, 3);
            assert_eq!(cfg.merchant, "shop");
            Ok(())
        });
    }

    #[allow(clippy::result_large_err)]
    #[test]
    fn a_file_sits_between_defaults_and_env_and_bad_values_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "svc.toml",
                "grpc_addr = \"127.0.0.1:7000\"\nmerchant = \"file\"\n",
            )?;
            jail.set_env("CONFIG_FILE", "svc.toml");
            jail.set_env("HOSTTEST2_MERCHANT", "env");
            let cfg = load_config(
                Svc {
                    common: CommonConfig::local("x", 1, 2),
                    merchant: "merchant".into(),
                },
                "HOSTTEST2_",
            )
            .unwrap();
            assert_eq!(cfg.common.grpc_addr, "127.0.0.1:7000");
            assert_eq!(cfg.merchant, "env");

            jail.set_env("HOSTTEST2_DB__MAX_CONNECTIONS", "many");
            let err = load_config(
                Svc {
                    common: CommonConfig::local("x", 1, 2),
                    merchant: "m".into(),
                },
                "HOSTTEST2_",
            )
            .unwrap_err();
            assert!(err.to_string().contains("max_connections"), "{err}");
            Ok(())
        });
    }
}
