//! Checks on client-supplied text and numbers, shared by every route.
//!
//! PostgreSQL refuses NUL bytes in text, and control characters have no business in names,
//! addresses or search queries; rejecting them here turns what would be a 500 into a clear 400.

use crate::error::ApiError;

/// Checks `value` is at most `max_chars` characters and free of control characters, and that
/// something is left after trimming white space. Returns the trimmed text.
///
/// # Errors
/// A 400 naming `field`.
pub fn text<'a>(
    field: &'static str,
    value: &'a str,
    max_chars: usize,
) -> Result<&'a str, ApiError> {
    let trimmed = optional_text(field, value, max_chars)?;
    if trimmed.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must not be empty"),
        ));
    }
    Ok(trimmed)
}

/// Like [`text`] but allows the empty string (and white space only), and tab, newline and
/// carriage return inside.
///
/// # Errors
/// A 400 naming `field`.
pub fn optional_text<'a>(
    field: &'static str,
    value: &'a str,
    max_chars: usize,
) -> Result<&'a str, ApiError> {
    // The length as sent, as the schema's maxLength counts it.
    if value.chars().count() > max_chars {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be at most {max_chars} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(value.trim())
}

/// A character [`text`] allows: not a control character, or tab, newline, carriage return.
const ALLOWED: &str = r"[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]";
/// A character that is neither a control character nor white space as Rust's `trim` sees it
/// (Unicode `White_Space`), spelled out so that every regex engine reads it alike.
pub const VISIBLE: &str =
    r"[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// The OpenAPI schema of a string field: `min..=max` characters matching `pattern`, and `null`
/// allowed where the field is optional.
fn string_schema(
    min: Option<usize>,
    max: usize,
    pattern: String,
    nullable: bool,
) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::SchemaType;
    use utoipa::openapi::{ObjectBuilder, Type};
    let kind = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::Type(Type::String)
    };
    ObjectBuilder::new()
        .schema_type(kind)
        .min_length(min)
        .max_length(Some(max))
        .pattern(Some(pattern))
        .build()
}

/// What [`text`] accepts, as a schema pattern.
pub fn text_pattern() -> String {
    format!("^{ALLOWED}*{VISIBLE}{ALLOWED}*$")
}

/// The OpenAPI schema of a field [`text`] checks, of at most `max` characters.
pub fn text_schema(max: usize) -> utoipa::openapi::Object {
    string_schema(Some(1), max, text_pattern(), false)
}

/// The OpenAPI schema of a field [`optional_text`] checks, of at most `max` characters.
pub fn optional_text_schema(max: usize, nullable: bool) -> utoipa::openapi::Object {
    string_schema(None, max, format!("^{ALLOWED}*$"), nullable)
}

/// [`text_schema`] of 20 characters (`schema_with` takes a function without arguments).
pub fn text_20() -> utoipa::openapi::Object {
    text_schema(20)
}

/// [`text_schema`] of 100 characters.
pub fn text_100() -> utoipa::openapi::Object {
    text_schema(100)
}

/// [`text_schema`] of 100 characters, or `null`.
pub fn text_100_or_null() -> utoipa::openapi::Object {
    string_schema(Some(1), 100, text_pattern(), true)
}

/// [`text_schema`] of 64 characters, or `null`.
pub fn text_64_or_null() -> utoipa::openapi::Object {
    string_schema(Some(1), 64, text_pattern(), true)
}

/// [`text_schema`] of 255 characters.
pub fn text_255() -> utoipa::openapi::Object {
    text_schema(255)
}

/// [`text_schema`] of 255 characters, or `null`.
pub fn text_255_or_null() -> utoipa::openapi::Object {
    string_schema(Some(1), 255, text_pattern(), true)
}

/// [`text_schema`] of 254 characters (an e-mail address).
pub fn text_254() -> utoipa::openapi::Object {
    text_schema(254)
}

/// [`optional_text_schema`] of 10,000 characters (a description).
pub fn long_text() -> utoipa::openapi::Object {
    optional_text_schema(10_000, false)
}

/// [`optional_text_schema`] of 10,000 characters, or `null`.
pub fn long_text_or_null() -> utoipa::openapi::Object {
    optional_text_schema(10_000, true)
}

/// The OpenAPI schema of a new password: 8 to 128 characters, no NUL.
pub fn password_schema() -> utoipa::openapi::Object {
    string_schema(Some(8), 128, r"^[^\u0000]*$".to_owned(), false)
}

/// [`text_schema`] of 200 characters.
pub fn text_200() -> utoipa::openapi::Object {
    text_schema(200)
}

/// Checks an integer lies in `min..=max`.
///
/// # Errors
/// A 422 naming `field` and the range.
pub fn range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ApiError> {
    if value < min || value > max {
        return Err(ApiError::unprocessable(
            "out_of_range",
            format!("{field} must be between {min} and {max}"),
        ));
    }
    Ok(value)
}

/// A requested page: 1-based page number and page size, bounded by the configured limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Items per page.
    pub limit: u32,
}

impl Page {
    /// Validates `page` and `limit` (defaults 1 and 20) against the page size and the deepest
    /// reachable result.
    ///
    /// # Errors
    /// A 400 saying which bound was crossed.
    pub fn new(
        page: Option<u32>,
        limit: Option<u32>,
        max_limit: u32,
        max_window: u32,
    ) -> Result<Self, ApiError> {
        let page = page.unwrap_or(1);
        let limit = limit.unwrap_or(20.min(max_limit));
        if page == 0 {
            return Err(ApiError::bad_request("invalid_page", "page starts at 1"));
        }
        if limit == 0 || limit > max_limit {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be between 1 and {max_limit}"),
            ));
        }
        if u64::from(page) * u64::from(limit) > u64::from(max_window) {
            return Err(ApiError::bad_request(
                "page_too_deep",
                format!("page × limit must not exceed {max_window}; narrow the query instead"),
            ));
        }
        Ok(Self { page, limit })
    }

    /// Validates `page` and `limit` against the configured limits.
    ///
    /// # Errors
    /// A 400 saying which bound was crossed.
    pub fn within(
        page: Option<u32>,
        limit: Option<u32>,
        limits: &crate::config::LimitsConfig,
    ) -> Result<Self, ApiError> {
        Self::new(page, limit, limits.max_page_size, limits.max_result_window)
    }

    /// Rows to skip.
    pub fn offset(self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.limit)
    }

    /// Rows to fetch: one more than the page, to learn whether another page exists.
    pub fn fetch(self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// A whole number in a JSON body, spelled `3` or `3.0`: JSON Schema's `integer` admits both, and
/// some JSON encoders write every number with a fraction. Anything else (`3.5`, a string, out of
/// `T`'s range) is refused, as serde would (a 422 naming the field).
///
/// # Errors
/// Not a whole number, or out of range.
pub fn whole<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    let number = serde_json::Number::deserialize(deserializer)?;
    whole_number(&number)
}

/// [`whole`] for an optional field (absent or `null`: `None`); use with `#[serde(default)]`.
///
/// # Errors
/// Not a whole number, or out of range.
pub fn whole_opt<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64>,
{
    use serde::Deserialize;
    Option::<serde_json::Number>::deserialize(deserializer)?
        .map(|n| whole_number(&n))
        .transpose()
}

fn whole_number<E: serde::de::Error, T: TryFrom<i64>>(n: &serde_json::Number) -> Result<T, E> {
    // Beyond 2^53 a float no longer holds every whole number exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let value = n
        .as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT)
                .map(|f| f as i64)
        })
        .ok_or_else(|| E::custom(format!("invalid value {n}, expected a whole number")))?;
    T::try_from(value).map_err(|_| E::custom(format!("{value} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_nul_and_blank_but_keeps_unicode() {
        assert!(text("name", "a\0b", 10).is_err());
        assert!(text("name", "   ", 10).is_err());
        assert_eq!(text("name", " Ünïcødé 🚀 ", 20).ok(), Some("Ünïcødé 🚀"));
        assert!(text("name", "ééééé", 4).is_err());
    }

    #[test]
    fn text_length_counts_what_was_sent() {
        // 101 characters, 100 of them left after trimming: the schema's maxLength says no.
        let padded = format!(" {}", "a".repeat(100));
        assert!(text("name", &padded, 100).is_err());
        assert!(text("name", &"a".repeat(100), 100).is_ok());
    }

    #[derive(Debug, serde::Deserialize)]
    struct Quantity {
        #[serde(deserialize_with = "whole")]
        n: i32,
        #[serde(default, deserialize_with = "whole_opt")]
        m: Option<i32>,
    }

    #[test]
    fn whole_numbers_may_be_spelled_with_a_zero_fraction() {
        let parse = |json: &str| serde_json::from_str::<Quantity>(json).map(|q| (q.n, q.m));
        assert_eq!(parse(r#"{"n": 3}"#).ok(), Some((3, None)));
        assert_eq!(parse(r#"{"n": 83.0, "m": 2.0}"#).ok(), Some((83, Some(2))));
        assert_eq!(parse(r#"{"n": 1, "m": null}"#).ok(), Some((1, None)));
        for refused in [
            r#"{"n": 3.5}"#,
            r#"{"n": "3"}"#,
            r#"{"n": 3000000000}"#,
            r#"{"n": 1e300}"#,
        ] {
            assert!(parse(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn page_bounds() {
        assert_eq!(
            Page::new(None, None, 100, 10_000).ok(),
            Some(Page { page: 1, limit: 20 })
        );
        assert!(Page::new(Some(0), None, 100, 10_000).is_err());
        assert!(Page::new(None, Some(101), 100, 10_000).is_err());
        assert!(Page::new(Some(101), Some(100), 100, 10_000).is_err());
        assert_eq!(
            Page::new(Some(3), Some(10), 100, 10_000)
                .map(Page::offset)
                .ok(),
            Some(20)
        );
    }
}
