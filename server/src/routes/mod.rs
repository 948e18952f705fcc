//! HTTP routes, one module per resource, merged here.

pub mod accounts;
pub mod analytics;
pub mod cart;
pub mod checkout;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod ml;
pub mod openapi;
pub mod orders;
pub mod products;
pub mod search;
pub mod stress;

use crate::app::AppState;
use axum::Router;
use axum::handler::Handler;
use axum::routing::{self, MethodRouter};

/// Every route of the API.
pub fn router() -> Routes {
    Routes::new()
        .merge(products::router())
        .merge(search::router())
        .merge(accounts::router())
        .merge(cart::router())
        .merge(checkout::router())
        .merge(orders::router())
        .merge(analytics::router())
        .merge(health::router())
        .merge(ml::router())
        .merge(metrics::router())
        .merge(stress::router())
        .merge(dashboard::router())
        .merge(openapi::router())
}

/// A router that keeps the list of the method and path of each route it serves, which axum's
/// `Router` cannot tell, so a test can hold every route against the optimizer's route policy.
/// One method per call: axum merges the calls on one path into one method router.
pub struct Routes {
    router: Router<AppState>,
    served: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    fn on(
        mut self,
        method: &'static str,
        path: &'static str,
        method_router: MethodRouter<AppState>,
    ) -> Self {
        self.router = self.router.route(path, method_router);
        self.served.push((method, path));
        self
    }

    fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on("GET", path, routing::get(handler))
    }

    fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on("POST", path, routing::post(handler))
    }

    fn patch<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on("PATCH", path, routing::patch(handler))
    }

    fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, handler: H) -> Self {
        self.on("DELETE", path, routing::delete(handler))
    }

    fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }

    /// Method and path template of every route served.
    pub fn served(&self) -> &[(&'static str, &'static str)] {
        &self.served
    }

    /// The axum router.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optimizer::policy::{OTHER, POLICIES, of};

    #[test]
    fn every_route_served_has_a_policy_and_every_policy_a_route() {
        let routes = router();
        for &(method, path) in routes.served() {
            assert_ne!(
                of(method, path),
                &OTHER,
                "{method} {path} has no route policy"
            );
        }
        for p in &POLICIES {
            assert!(
                routes.served().contains(&(p.method, p.path)),
                "the route policy lists {} {}, which the server does not serve",
                p.method,
                p.path
            );
        }
    }
}
