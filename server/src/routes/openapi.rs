//! The OpenAPI 3.1 description of every endpoint, generated from the handlers' annotations.

use crate::routes::Routes;
use crate::routes::{
    accounts, analytics, cart, checkout, health, metrics, ml, orders, products, search, stress,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().get("/api/openapi.json", || async {
        axum::Json(ApiDoc::openapi())
    })
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Shop API", description = "A self-tuning e-commerce API.\n\nWith read replicas \
        configured, a successful write's response carries `x-write-lsn` (and a `write_lsn` \
        cookie): send it back on catalogue, search and analytics reads to see that write at \
        once; without it those reads may come from a replica a moment behind."),
    paths(
        products::list, products::detail, products::create, products::update,
        search::search,
        accounts::register, accounts::login, accounts::logout, accounts::me,
        cart::view, cart::add, cart::set_quantity, cart::remove, cart::clear,
        checkout::checkout,
        orders::list, orders::detail,
        analytics::analytics,
        health::healthz, health::readyz,
        ml::ml_metrics, ml::series, ml::optimizer_log, ml::advise_now, ml::retrain_now,
        ml::rollback,
        stress::stress_test, metrics::prometheus,
    ),
    modifiers(&Security, &CommonResponses)
)]
pub struct ApiDoc;

/// The answers any operation may give whatever its handler does, added wherever the handler's
/// annotation left them out: 400 and 422 when it takes parameters or a body (malformed input, a
/// rule broken), 413 and 415 when it takes a body, 401 when it needs a token, and 503 everywhere
/// (the database away or saturated, the request shed or past its time; `Retry-After` says when
/// to come back).
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| -> RefOr<utoipa::openapi::Response> {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in api.paths.paths.values_mut() {
            let path_params = item.parameters.as_ref().is_some_and(|p| !p.is_empty());
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                let body = operation.request_body.is_some();
                let params =
                    path_params || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description));
                };
                if body || params {
                    add(
                        "400",
                        "Malformed input: a query, path or body that does not parse",
                    );
                }
                if body || params {
                    add(
                        "422",
                        "Well-formed input that breaks a rule: a value out of its range, a field \
                         of the wrong type, missing or unknown, or a request the current state \
                         does not allow",
                    );
                }
                if body {
                    add("413", "The body is larger than the limit (16 KiB)");
                    add("415", "The body is not sent as application/json");
                }
                if secured {
                    add("401", "No valid token");
                }
                add(
                    "503",
                    "Unavailable for now: the database is away, restarting or saturated, or the \
                     request was shed or ran past its time; Retry-After says when to come back",
                );
            }
        }
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        let bearer =
            || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("bearer", bearer());
        components.add_security_scheme("admin", bearer());
    }
}
