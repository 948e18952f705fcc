//! What the request log keeps of a request's path and query string.
//!
//! The log is training data, read by whoever runs the trainer: it must not hold what shoppers
//! typed. By default (`telemetry.keep_query_text = false`) a path keeps only the words of the
//! routes the server serves (`api`, `products`, ...) and plain numbers (ids, pages, limits);
//! every other path segment, query parameter value or unknown parameter name is replaced by
//! `~` and 16 hex digits of a keyed hash. The key is drawn at random when the server starts
//! and never written anywhere, so the same search is the same token within one server's logs
//! (repeats, cache keys, popularity can still be counted) but cannot be looked up in a
//! dictionary of likely searches. Credentials never reach the log: tokens and passwords travel
//! in headers and bodies, which are not logged, and a token pasted into a URL is hashed like
//! any other text.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};

/// Rewrites paths for the request log; see the module documentation.
#[derive(Debug, Clone)]
pub struct Redactor {
    keep: bool,
    key: RandomState,
    words: HashSet<&'static str>,
}

impl Redactor {
    /// `keep`: log paths and query strings as they came (`telemetry.keep_query_text`).
    pub fn new(keep: bool) -> Self {
        let words = crate::policy::POLICIES
            .iter()
            .flat_map(|p| p.path.split('/'))
            .filter(|w| !w.is_empty() && !w.starts_with('{'))
            .collect();
        Self {
            keep,
            key: RandomState::new(),
            words,
        }
    }

    /// The path and query as the log keeps them.
    pub fn apply<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        if self.keep {
            return Cow::Borrowed(path_and_query);
        }
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let kept_path = path.split('/').all(|s| self.is_word(s) || plain(s));
        let kept_query = query.is_none_or(|q| {
            q.split('&').all(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                is_name(name) && plain(value)
            })
        });
        if kept_path && kept_query {
            return Cow::Borrowed(path_and_query);
        }
        let mut out = String::with_capacity(path_and_query.len().min(128));
        for (i, segment) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            if self.is_word(segment) || plain(segment) {
                out.push_str(segment);
            } else {
                self.token(&mut out, segment);
            }
        }
        if let Some(query) = query {
            out.push('?');
            for (i, pair) in query.split('&').enumerate() {
                if i > 0 {
                    out.push('&');
                }
                match pair.split_once('=') {
                    Some((name, value)) => {
                        if is_name(name) {
                            out.push_str(name);
                        } else {
                            self.token(&mut out, name);
                        }
                        out.push('=');
                        if plain(value) {
                            out.push_str(value);
                        } else {
                            self.token(&mut out, value);
                        }
                    }
                    None if is_name(pair) => out.push_str(pair),
                    None => self.token(&mut out, pair),
                }
            }
        }
        Cow::Owned(out)
    }

    fn is_word(&self, segment: &str) -> bool {
        self.words.contains(segment)
    }

    fn token(&self, out: &mut String, text: &str) {
        let _ = write!(out, "~{:016x}", self.key.hash_one(text));
    }
}

/// Empty, or a number (digits with at most a leading minus and one dot): ids, pages, limits,
/// time windows.
fn plain(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    digits.len() <= 20
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A parameter name a developer wrote, not text a shopper typed: short, lower-case ASCII.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_words_numbers_and_parameter_names_are_kept() {
        let r = Redactor::new(false);
        for path in [
            "/api/products/42",
            "/api/products?page=2&limit=20",
            "/api/cart/7",
            "/api/ml-metrics/series?since=-60.5",
            "/healthz",
        ] {
            assert_eq!(r.apply(path), path);
        }
    }

    #[test]
    fn search_terms_and_free_text_are_hashed_the_same_way_each_time() {
        let r = Redactor::new(false);
        let a = r.apply("/api/search?q=red%20wool%20socks&page=1");
        assert!(!a.contains("wool"), "{a}");
        assert!(
            a.starts_with("/api/search?q=~") && a.ends_with("&page=1"),
            "{a}"
        );
        assert_eq!(a, r.apply("/api/search?q=red%20wool%20socks&page=1"));
        assert_ne!(a, r.apply("/api/search?q=blue%20socks&page=1"));
        let b = r.apply("/api/products/my-secret-text?Token=abc");
        assert!(
            !b.contains("secret") && !b.contains("Token") && !b.contains("abc"),
            "{b}"
        );
        assert!(b.starts_with("/api/products/~"), "{b}");
    }

    #[test]
    fn a_server_with_another_key_hashes_differently() {
        let path = "/api/search?q=socks";
        assert_ne!(
            Redactor::new(false).apply(path),
            Redactor::new(false).apply(path)
        );
    }

    #[test]
    fn keep_query_text_logs_paths_as_they_came() {
        let path = "/api/search?q=red%20socks";
        assert_eq!(Redactor::new(true).apply(path), path);
    }
}
