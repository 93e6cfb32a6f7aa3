//! Whole numbers in JSON bodies, as JSON Schema counts them: `2` and `2.0` alike. OpenAPI 3.1's
//! `integer` is JSON Schema's, where a number with a zero fraction is an integer; a client whose
//! JSON library writes every number as a double is not wrong, and a fuzzer sends such numbers on
//! purpose. serde's integers refuse `2.0`, so every integer field of every body the services
//! accept (orders, refunds, admin bodies, faults, failpoints) reads through here instead: one
//! rule for the whole platform. `2.5`, a string, or a value outside the field's type is refused.
//!
//! Use: `#[serde(deserialize_with = "admin::whole::number")]` (with `#[serde(default)]` where
//! the field is optional), or [`optional`] for an `Option`.

use serde::{Deserialize, Deserializer};

/// A whole number that fits `T`.
pub fn number<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    let n = serde_json::Number::deserialize(d)?;
    let out_of_range = || serde::de::Error::custom(format!("{n} is out of range"));
    if let Some(i) = n.as_i64() {
        return T::try_from(i).map_err(|_| out_of_range());
    }
    if let Some(u) = n.as_u64() {
        return T::try_from(u).map_err(|_| out_of_range());
    }
    match n.as_f64() {
        // Every double in this range with no fraction is exactly an i64.
        Some(f) if f.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&f) => {
            T::try_from(f as i64).map_err(|_| out_of_range())
        }
        _ => Err(serde::de::Error::custom(format!(
            "{n} is not a whole number within range"
        ))),
    }
}

/// [`number`], optional (absent or `null`: `None`).
pub fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    #[derive(Deserialize)]
    #[serde(bound = "T: TryFrom<i64> + TryFrom<u64>")]
    struct Whole<T>(#[serde(deserialize_with = "number")] T);
    Ok(Option::<Whole<T>>::deserialize(d)?.map(|w| w.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(deserialize_with = "number")]
        n: u32,
        #[serde(default, deserialize_with = "optional")]
        o: Option<i64>,
    }

    fn parse(body: &str) -> Result<(u32, Option<i64>), serde_json::Error> {
        serde_json::from_str::<Body>(body).map(|b| (b.n, b.o))
    }

    #[test]
    fn a_whole_number_written_as_a_double_is_that_number_and_anything_else_is_refused() {
        assert_eq!(parse(r#"{"n": 2}"#).unwrap(), (2, None));
        assert_eq!(
            parse(r#"{"n": 276.0, "o": -3.0}"#).unwrap(),
            (276, Some(-3))
        );
        assert_eq!(parse(r#"{"n": 1, "o": null}"#).unwrap(), (1, None));
        assert_eq!(
            parse(r#"{"n": 1, "o": 1e17}"#).unwrap(),
            (1, Some(100_000_000_000_000_000))
        );
        for bad in [
            r#"{"n": 2.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 4294967296}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": "2"}"#,
            r#"{"n": 1, "o": 1e19}"#,
            r#"{"o": 1}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} was taken");
        }
    }
}
