//! Keyset pagination for admin listings: `?limit=100&after=<last id of the previous page>`.

use serde::Deserialize;

/// Query parameters of a listing.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    #[serde(default = "default_limit")]
    pub limit: i64,
    #[serde(default)]
    pub after: String,
}

fn default_limit() -> i64 {
    100
}

impl Page {
    /// The limit, clamped to 1..=1000.
    pub fn limit(&self) -> i64 {
        self.limit.clamp(1, 1000)
    }

    /// The `after` value for the next page: the last key, when this page was full.
    pub fn next_after<T>(&self, rows: &[T], key: impl Fn(&T) -> String) -> Option<String> {
        (rows.len() as i64 == self.limit())
            .then(|| rows.last().map(key))
            .flatten()
    }
}
