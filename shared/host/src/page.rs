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
        if !(1..=19).contains(&gid.len()) || !gid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        // 19 digits always fit a u64; beyond any gid, the page after it is empty.
        let gid = gid.parse::<u64>().map_err(|_| bad())?;
        Ok((i64::try_from(gid).unwrap_or(i64::MAX), branch.to_owned()))
    }

    /// The `after` value for the next page: the last key, when this page was full.
    pub fn next_after<T>(&self, rows: &[T], key: impl Fn(&T) -> String) -> Option<String> {
        (rows.len() as i64 == self.limit())
            .then(|| rows.last().map(key))
            .flatten()
    }
}

/// A positive numeric id (an order's, a refund's, a global transaction's) in a path or a cursor,
/// as the APIs write it and their documents describe it (`^[1-9][0-9]{0,18}$`): 1 to 19 digits,
/// no leading zero, no sign, no space; anything else is a 400 naming `what`. `Ok(None)`: well
/// formed but above `i64::MAX`, so no id the platform makes: the caller answers as for an id it
/// does not have (a 404, an empty list, the listing from its start).
pub fn positive_id(what: &str, raw: &str) -> Result<Option<i64>, crate::Problem> {
    let canonical = (1..=19).contains(&raw.len())
        && !raw.starts_with('0')
        && raw.bytes().all(|b| b.is_ascii_digit());
    if !canonical {
        return Err(crate::Problem::bad_request(format!(
            "{what} must be a positive integer (digits, no leading zero), not {raw:?}"
        )));
    }
    // 19 digits always fit a u64.
    Ok(raw.parse::<u64>().ok().and_then(|v| i64::try_from(v).ok()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_positive_id_is_read_only_in_its_canonical_form() {
        assert_eq!(positive_id("id", "7").unwrap(), Some(7));
        assert_eq!(
            positive_id("id", "9223372036854775807").unwrap(),
            Some(i64::MAX)
        );
        // Well formed, but no id the platform makes: the caller's "no such".
        assert_eq!(positive_id("id", "9223372036854775808").unwrap(), None);
        assert_eq!(positive_id("id", "9999999999999999999").unwrap(), None);
        for bad in [
            "",
            "0",
            "007",
            "+7",
            "-7",
            " 7",
            "7 ",
            "7.0",
            "1e3",
            "12345678901234567890",
        ] {
            let e = positive_id("id", bad).unwrap_err();
            assert_eq!(
                actix_web::ResponseError::status_code(&e),
                actix_web::http::StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_gid_branch_cursor_is_digits_a_slash_and_the_rest() {
        let page = |after: &str| Page {
            limit: 10,
            after: after.into(),
        };
        assert_eq!(page("").gid_branch_after().unwrap(), (-1, String::new()));
        assert_eq!(
            page("12/b/1").gid_branch_after().unwrap(),
            (12, "b/1".to_owned())
        );
        assert_eq!(
            page("9999999999999999999/x").gid_branch_after().unwrap(),
            (i64::MAX, "x".to_owned())
        );
        for bad in ["12", "-1/x", "+1/x", "/x", " 1/x", "12345678901234567890/x"] {
            assert!(page(bad).gid_branch_after().is_err(), "{bad:?}");
        }
    }
}
