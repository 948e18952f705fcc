//! Checks on client-supplied text and numbers, shared by every route.
//!
//! PostgreSQL refuses NUL bytes in text, and control characters have no business in names,
//! addresses or search queries; rejecting them here turns what would be a 500 into a clear 400.

use crate::error::ApiError;

/// Trims `value` and checks it is non-empty, at most `max_chars` characters, and free of
/// control characters. Returns the trimmed text.
///
/// # Errors
/// A 400 naming `field`.
pub fn text<'a>(
    field: &'static str,
    value: &'a str,
    max_chars: usize,
) -> Result<&'a str, ApiError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must not be empty"),
        ));
    }
    optional_text(field, trimmed, max_chars)
}

/// What [`text`] accepts, as the pattern of its OpenAPI schema: after trimming something is
/// left, and no control character but tab, newline and carriage return.
pub const TEXT_PATTERN: &str = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$";

/// The OpenAPI schema of a field [`text`] checks, of at most `max` characters.
pub fn text_schema(max: usize) -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(TEXT_PATTERN))
        .build()
}

/// [`text_schema`] of 20 characters (`schema_with` takes a function without arguments).
pub fn text_20() -> utoipa::openapi::Object {
    text_schema(20)
}

/// [`text_schema`] of 100 characters.
pub fn text_100() -> utoipa::openapi::Object {
    text_schema(100)
}

/// [`text_schema`] of 200 characters.
pub fn text_200() -> utoipa::openapi::Object {
    text_schema(200)
}

/// Like [`text`] but allows the empty string.
///
/// # Errors
/// A 400 naming `field`.
pub fn optional_text<'a>(
    field: &'static str,
    value: &'a str,
    max_chars: usize,
) -> Result<&'a str, ApiError> {
    let trimmed = value.trim();
    if trimmed.chars().count() > max_chars {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be at most {max_chars} characters"),
        ));
    }
    // Newlines and tabs are fine in long text; every other control character is refused.
    if trimmed
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(trimmed)
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
