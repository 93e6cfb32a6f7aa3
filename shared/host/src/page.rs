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

    /// `after` read as `<gid>/<branch id>`, the cursor of listings keyed by (gid, branch):
    /// `(-1, "")` when empty, so the first page starts at the beginning.
    pub fn gid_branch_after(&self) -> Result<(i64, String), crate::Problem> {
        if self.after.is_empty() {
            return Ok((-1, String::new()));
        }
        let bad = || {
            crate::Problem::bad_request("after must be <gid>/<branch id>, as next_after gives it")
        };
        let (gid, branch) = self.after.split_once('/').ok_or_else(bad)?;
        Ok((gid.parse().map_err(|_| bad())?, branch.to_owned()))
    }

    /// The `after` value for the next page: the last key, when this page was full.
    pub fn next_after<T>(&self, rows: &[T], key: impl Fn(&T) -> String) -> Option<String> {
        (rows.len() as i64 == self.limit())
            .then(|| rows.last().map(key))
            .flatten()
    }
}

/// 63-bit ids travel as JSON strings so JavaScript clients do not round them:
/// `#[serde(with = "host::page::id_string")]` on an `i64` field.
pub mod id_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
