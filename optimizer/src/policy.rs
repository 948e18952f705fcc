//! The route policy: every route the server serves, one line each, with the rules the
//! optimizer applies to it (priority, cache, throttling while healing, exemption from
//! admission, the route feature).
//!
//! Every per-route rule is read from this table and nowhere else. A request whose route the
//! table does not know (a 404, say) runs under [`OTHER`]; the server's tests fail when it
//! serves a route the table lacks. A route's feature index comes from `contract`'s route list,
//! which the models' schema fingerprint covers: routes it does not list (the dashboard, the
//! `/api/ml-metrics/*` sub-routes) share feature 0, "other", so adding one here changes no
//! model.

use crate::admission::Priority;
use crate::cache::Kind;
use contract::routes::route_index;

/// What the optimizer does with one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// HTTP method, as the router declares it.
    pub method: &'static str,
    /// Path template, as the router declares it (e.g. `/api/products/{id}`).
    pub path: &'static str,
    /// Index into `contract::routes::ROUTES`: the route feature and the statistics slot.
    pub feature: usize,
    /// Priority before the client's `x-priority` and the checkout rule.
    pub priority: Priority,
    /// The response cache this route's answers go to, if any (GETs only).
    pub cache: Option<Kind>,
    /// Shed outright while auto-healing is in force.
    pub throttled_while_healing: bool,
    /// Never held or shed by admission: the operator's own view of the server (health,
    /// metrics, the optimizer's state, the dashboard's files) and remedies (retrain, rollback),
    /// which must answer most of all during an incident or an overload. None of them does more
    /// than a trivial query on the request path.
    pub exempt_from_admission: bool,
}

impl Policy {
    const fn new(method: &'static str, path: &'static str, priority: Priority) -> Self {
        Self {
            method,
            path,
            feature: route_index(method, path),
            priority,
            cache: None,
            throttled_while_healing: false,
            exempt_from_admission: false,
        }
    }

    const fn exempt(self) -> Self {
        Self {
            exempt_from_admission: true,
            ..self
        }
    }

    const fn cached(self, kind: Kind) -> Self {
        Self {
            cache: Some(kind),
            ..self
        }
    }

    const fn throttled(self) -> Self {
        Self {
            throttled_while_healing: true,
            ..self
        }
    }

    /// `GET /api/products/{id}`: the label logs and metrics use.
    pub fn label(&self) -> String {
        contract::routes::route_label(self.feature)
    }
}

use Priority::{Critical, High, Low, Normal};

/// A request on no route the table knows.
pub const OTHER: Policy = Policy::new("*", "other", Normal);

/// Every route the server serves.
pub const POLICIES: [Policy; 33] = [
    Policy::new("GET", "/api/products", Normal).cached(Kind::List),
    Policy::new("POST", "/api/products", Normal),
    Policy::new("GET", "/api/products/{id}", Normal).cached(Kind::Detail),
    Policy::new("PATCH", "/api/products/{id}", Normal),
    Policy::new("GET", "/api/search", Normal).cached(Kind::Search),
    Policy::new("POST", "/api/auth/register", High),
    Policy::new("POST", "/api/auth/login", High),
    Policy::new("POST", "/api/auth/logout", High),
    Policy::new("GET", "/api/me", High),
    Policy::new("GET", "/api/cart", High),
    Policy::new("POST", "/api/cart", High),
    Policy::new("DELETE", "/api/cart", High),
    Policy::new("PATCH", "/api/cart/{product_id}", High),
    Policy::new("DELETE", "/api/cart/{product_id}", High),
    // Critical only for a signed-in buyer: see `middleware::priority_of`.
    Policy::new("POST", "/api/checkout", Critical),
    Policy::new("GET", "/api/orders", High),
    Policy::new("GET", "/api/orders/{id}", High),
    Policy::new("GET", "/api/analytics", Low),
    Policy::new("GET", "/api/stress-test", Low).throttled(),
    Policy::new("GET", "/api/ml-metrics", Normal).exempt(),
    Policy::new("GET", "/api/ml-metrics/series", Normal).exempt(),
    Policy::new("GET", "/api/ml-metrics/log", Normal).exempt(),
    Policy::new("POST", "/api/ml-metrics/index-advice", Normal),
    // The operator's remedies, wanted most while the server sheds: the retrain trains in a
    // niced background process, the rollback swaps folders; neither holds a database
    // connection for long.
    Policy::new("POST", "/api/ml-metrics/retrain", Normal).exempt(),
    Policy::new("POST", "/api/ml-metrics/rollback", Normal).exempt(),
    Policy::new("GET", "/metrics", Normal).exempt(),
    Policy::new("GET", "/healthz", Normal).exempt(),
    Policy::new("GET", "/readyz", Normal).exempt(),
    Policy::new("GET", "/api/openapi.json", Normal),
    Policy::new("GET", "/dashboard", Normal),
    Policy::new("POST", "/dashboard/login", Normal),
    Policy::new("POST", "/dashboard/logout", Normal),
    Policy::new("GET", "/dashboard/assets/{file}", Normal).exempt(),
];

/// The policy of a request on `path` (the router's template) with `method`, or [`OTHER`].
/// A scan of a few dozen short strings, once per request: cheaper here than hashing.
pub fn of(method: &str, path: &str) -> &'static Policy {
    POLICIES
        .iter()
        .find(|p| p.path == path && p.method == method)
        .unwrap_or(&OTHER)
}

/// The policy whose answers go to `kind`'s cache.
pub fn cached_as(kind: Kind) -> &'static Policy {
    POLICIES
        .iter()
        .find(|p| p.cache == Some(kind))
        .unwrap_or(&OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::routes::ROUTES;

    #[test]
    fn every_route_feature_has_exactly_one_policy() {
        for (i, route) in ROUTES.iter().enumerate().skip(1) {
            let owners: Vec<_> = POLICIES.iter().filter(|p| p.feature == i).collect();
            assert_eq!(
                owners.len(),
                1,
                "{} {}: {owners:?}",
                route.method,
                route.path
            );
            assert_eq!(
                (owners[0].method, owners[0].path),
                (route.method, route.path)
            );
        }
    }

    #[test]
    fn no_route_is_listed_twice_and_only_gets_are_cached() {
        for (i, p) in POLICIES.iter().enumerate() {
            assert!(
                POLICIES[..i]
                    .iter()
                    .all(|q| (q.method, q.path) != (p.method, p.path)),
                "{} {} twice",
                p.method,
                p.path
            );
            assert!(
                p.cache.is_none() || p.method == "GET",
                "{} {}",
                p.method,
                p.path
            );
        }
        for kind in Kind::ALL {
            assert_eq!(cached_as(kind).cache, Some(kind));
        }
    }

    #[test]
    fn unknown_routes_run_as_other() {
        assert_eq!(of("GET", "/nope"), &OTHER);
        assert_eq!(of("DELETE", "/api/products"), &OTHER);
        assert_eq!(of("GET", "/api/products/{id}").cache, Some(Kind::Detail));
        assert_eq!(of("GET", "/dashboard").feature, 0);
    }
}
