//! Why a measurement could not be made (exit code 2), as opposed to a measurement that found a
//! violation (exit code 1, a verdict, not an error).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Arguments that cannot be measured with.
    #[error("{0}")]
    Args(String),
    /// A secret neither given as a flag nor readable from the platform's data folder.
    #[error("no {flag} given and {} is unreadable ({source}): start the platform or pass {flag}", path.display())]
    Secret {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An admin call of the platform under test failed (setting up, auditing).
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("no PostgreSQL: set DATABASE_URL or install PostgreSQL")]
    NoPostgres,
    /// The baseline's own database.
    #[error("the baseline's database: {0}")]
    Database(#[from] store::StoreError),
    /// Starting, restarting or reaching a platform of our own (chaos).
    #[error("the platform: {0}")]
    Platform(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for LoadError {
    fn from(e: sqlx::Error) -> Self {
        LoadError::Database(e.into())
    }
}

/// Writes a report as pretty JSON to `out`.
pub fn write_json(out: &std::path::Path, report: &impl serde::Serialize) -> Result<(), LoadError> {
    std::fs::write(
        out,
        serde_json::to_string_pretty(report).expect("a report is JSON"),
    )
    .map_err(|source| LoadError::Io {
        what: format!("writing {}", out.display()),
        source,
    })
}
