//! Route templates in a fixed order. A route's index is a model feature, so the list only ever
//! grows at the end, and it is part of the schema fingerprint.

/// A route template: method and path as the router declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template, e.g. `/api/products/{id}`.
    pub path: &'static str,
}

const fn r(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

/// Every route, in feature order. Index 0 is "anything else" (unknown paths, 404s).
pub const ROUTES: [Route; 24] = [
    r("*", "other"),
    r("GET", "/api/products"),
    r("GET", "/api/products/{id}"),
    r("GET", "/api/search"),
    r("POST", "/api/products"),
    r("PATCH", "/api/products/{id}"),
    r("POST", "/api/auth/register"),
    r("POST", "/api/auth/login"),
    r("POST", "/api/auth/logout"),
    r("GET", "/api/me"),
    r("GET", "/api/cart"),
    r("POST", "/api/cart"),
    r("DELETE", "/api/cart"),
    r("PATCH", "/api/cart/{product_id}"),
    r("DELETE", "/api/cart/{product_id}"),
    r("POST", "/api/checkout"),
    r("GET", "/api/orders"),
    r("GET", "/api/orders/{id}"),
    r("GET", "/api/analytics"),
    r("GET", "/api/ml-metrics"),
    r("GET", "/api/stress-test"),
    r("GET", "/metrics"),
    r("GET", "/healthz"),
    r("GET", "/readyz"),
];

/// Index of a route in [`ROUTES`], or 0 ("other"). A `const fn`, so a table of routes can
/// carry each route's index without writing it out.
pub const fn route_index(method: &str, path_template: &str) -> usize {
    let mut i = 1;
    while i < ROUTES.len() {
        if same(ROUTES[i].method, method) && same(ROUTES[i].path, path_template) {
            return i;
        }
        i += 1;
    }
    0
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A short label for a route, e.g. `GET /api/products/{id}`, for logs and metrics.
pub fn route_label(index: usize) -> String {
    let r = ROUTES.get(index).copied().unwrap_or(ROUTES[0]);
    if index == 0 {
        "other".to_owned()
    } else {
        format!("{} {}", r.method, r.path)
    }
}
