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
    info(title = "Shop API", description = "A self-tuning e-commerce API"),
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
    modifiers(&Security)
)]
pub struct ApiDoc;

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
