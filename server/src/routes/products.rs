//! Catalogue: list, detail, and admin create/update.

use crate::app::AppState;
use crate::auth::Admin;
use crate::db::ReadFrom;
use crate::error::{ApiError, ErrorBody, on_constraint};
use crate::extract::{Json, Path, Query, WriteLsnHeader};
use crate::routes::Routes;
use crate::validate::{self, Page};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/api/products", list)
        .post("/api/products", create)
        .get("/api/products/{id}", detail)
        .patch("/api/products/{id}", update)
}

/// The columns every product query selects, in the order [`Product::from_row`] reads them.
pub const PRODUCT_COLUMNS: &str = "p.id, p.sku, p.name, p.description, p.price, p.category, \
     p.active, p.popularity, COALESCE(i.quantity, 0), p.created_at, p.updated_at";

/// A catalogue entry.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// Product id.
    pub id: i64,
    /// Stock keeping unit, unique.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Long description.
    pub description: String,
    /// Unit price as an exact decimal string, e.g. "1299.99".
    #[schema(value_type = String, example = "1299.99")]
    pub price: Decimal,
    /// Category, e.g. "electronics".
    pub category: String,
    /// Whether the product is listed.
    pub active: bool,
    /// Popularity score (higher sells more).
    pub popularity: i32,
    /// Units in stock.
    pub stock: i32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Product {
    /// Reads a row selected with [`PRODUCT_COLUMNS`].
    pub fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            sku: row.get(1),
            name: row.get(2),
            description: row.get(3),
            price: row.get(4),
            category: row.get(5),
            active: row.get(6),
            popularity: row.get(7),
            stock: row.get(8),
            created_at: row.get(9),
            updated_at: row.get(10),
        }
    }
}

/// A page of products.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductPage {
    /// The products on this page.
    pub products: Vec<Product>,
    /// 1-based page number.
    pub page: u32,
    /// Page size.
    pub limit: u32,
    /// Whether another page follows.
    pub has_more: bool,
}

impl ProductPage {
    /// Builds a page from rows fetched with `LIMIT page.fetch()`.
    pub fn from_rows(rows: &[Row], page: Page) -> Self {
        let limit = page.limit as usize;
        Self {
            products: rows.iter().take(limit).map(Product::from_row).collect(),
            page: page.page,
            limit: page.limit,
            has_more: rows.len() > limit,
        }
    }
}

/// Query parameters of the product list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1-based page number (default 1); page × limit at most 10,000 (`limits.max_result_window`).
    #[param(minimum = 1, maximum = 10_000)]
    pub page: Option<u32>,
    /// Page size (default 20, at most 100: `limits.max_page_size`).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Only this category.
    #[param(schema_with = crate::validate::text_100)]
    pub category: Option<String>,
}

/// List active products, most popular first.
#[utoipa::path(get, path = "/api/products", tag = "catalogue", params(ListParams, WriteLsnHeader),
    responses((status = 200, body = ProductPage), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    from: ReadFrom,
    Query(params): Query<ListParams>,
) -> Result<Json<ProductPage>, ApiError> {
    let limits = &state.config.limits;
    let page = Page::within(params.page, params.limit, limits)?;
    let category = params
        .category
        .as_deref()
        .map(|category| validate::text("category", category, 100))
        .transpose()?;
    // Two statements rather than one with `$1 IS NULL OR ...`: a generic plan for the combined
    // form cannot use an index on category, and the plans here should be the obvious ones.
    let mut conn = state.db.read(from).await?;
    let rows = match category {
        Some(category) => {
            conn.query(
                &format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products p LEFT JOIN inventory i ON i.product_id = p.id \
                     WHERE p.active AND p.category = $1 ORDER BY p.popularity DESC, p.id LIMIT $2 OFFSET $3"
                ),
                &[&category, &page.fetch(), &page.offset()],
            )
            .await?
        }
        None => {
            conn.query(
                &format!(
                    "SELECT {PRODUCT_COLUMNS} FROM products p LEFT JOIN inventory i ON i.product_id = p.id \
                     WHERE p.active ORDER BY p.popularity DESC, p.id LIMIT $1 OFFSET $2"
                ),
                &[&page.fetch(), &page.offset()],
            )
            .await?
        }
    };
    Ok(Json(ProductPage::from_rows(&rows, page)))
}

/// Fetches one product (inactive ones only when `include_inactive`), from a target `from`
/// allows; after a write, from the primary ([`ReadFrom::PRIMARY`]).
async fn fetch(
    state: &AppState,
    from: ReadFrom,
    id: i64,
    include_inactive: bool,
) -> Result<Product, ApiError> {
    let sql = format!(
        "SELECT {PRODUCT_COLUMNS} FROM products p LEFT JOIN inventory i ON i.product_id = p.id \
         WHERE p.id = $1 AND (p.active OR $2)"
    );
    let row = state
        .db
        .read(from)
        .await?
        .query_opt(&sql, &[&id, &include_inactive])
        .await?;
    row.as_ref()
        .map(Product::from_row)
        .ok_or(ApiError::NotFound("product"))
}

/// Get one product. An unlisted one (`active: false`) only with the admin token, and then
/// with `Cache-Control: no-store`, so that no cache (the server's own included) keeps it for
/// anyone else.
#[utoipa::path(get, path = "/api/products/{id}", tag = "catalogue",
    params(("id" = i64, Path, description = "Product id"), WriteLsnHeader),
    responses((status = 200, body = Product), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    from: ReadFrom,
    Path(id): Path<i64>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let admin = state.auth.has_admin_token(&headers);
    let product = fetch(&state, from, id, admin).await?;
    let unlisted = !product.active;
    let mut response = Json(product).into_response();
    if unlisted {
        response.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    Ok(response)
}

/// A product to create (admin).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewProduct {
    /// Unique SKU (1-64 characters); generated when absent.
    #[schema(schema_with = validate::text_64_or_null)]
    pub sku: Option<String>,
    /// Display name (1-255 characters).
    #[schema(schema_with = validate::text_255)]
    pub name: String,
    /// Description (up to 10,000 characters).
    #[serde(default)]
    #[schema(schema_with = validate::long_text)]
    pub description: String,
    /// Price: a decimal string with at most two decimals, 0 to 9999999999.99 (`"19.99"`).
    #[schema(schema_with = price_schema)]
    pub price: String,
    /// Category (1-100 characters).
    #[schema(schema_with = validate::text_100)]
    pub category: String,
    /// Initial stock (0 to 1,000,000,000; default 0).
    #[serde(default, deserialize_with = "validate::whole")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i32,
    /// Popularity (0 to 1,000,000,000; default 0).
    #[serde(default, deserialize_with = "validate::whole")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub popularity: i32,
    /// Listed (default true).
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// Changes to a product (admin); absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProductUpdate {
    /// New name.
    #[schema(schema_with = validate::text_255_or_null)]
    pub name: Option<String>,
    /// New description.
    #[schema(schema_with = validate::long_text_or_null)]
    pub description: Option<String>,
    /// New price, as in a new product.
    #[schema(schema_with = price_or_null_schema)]
    pub price: Option<String>,
    /// New category.
    #[schema(schema_with = validate::text_100_or_null)]
    pub category: Option<String>,
    /// New stock level (absolute).
    #[serde(default, deserialize_with = "validate::whole_opt")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i32>,
    /// New popularity.
    #[serde(default, deserialize_with = "validate::whole_opt")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub popularity: Option<i32>,
    /// Listed or not.
    pub active: Option<bool>,
}

/// What a price looks like: up to ten digits without a leading zero, then up to two decimals.
const PRICE_PATTERN: &str = r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$";

fn price_schema_of(kind: utoipa::openapi::schema::SchemaType) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(kind)
        .pattern(Some(PRICE_PATTERN))
        .examples(["19.99"])
        .build()
}

fn price_schema() -> utoipa::openapi::Object {
    price_schema_of(utoipa::openapi::Type::String.into())
}

fn price_or_null_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::Type;
    price_schema_of(utoipa::openapi::schema::SchemaType::from_iter([
        Type::String,
        Type::Null,
    ]))
}

/// Largest price NUMERIC(12, 2) holds.
fn max_price() -> Decimal {
    Decimal::new(999_999_999_999, 2)
}

/// Reads a price as [`PRICE_PATTERN`] has it, and nothing else: a decimal string (JSON numbers
/// are refused by the type, as a binary float cannot hold most prices exactly).
fn check_price(text: &str) -> Result<Decimal, ApiError> {
    let refused = || {
        ApiError::unprocessable(
            "invalid_price",
            "price must be a string like \"19.99\": 0 to 9999999999.99, at most two decimals",
        )
    };
    let (whole, cents) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = !whole.is_empty()
        && whole.len() <= 10
        && digits(whole)
        && (whole == "0" || !whole.starts_with('0'))
        && (!text.contains('.') || (1..=2).contains(&cents.len()))
        && digits(cents);
    if !well_formed {
        return Err(refused());
    }
    let price: Decimal = text.parse().map_err(|_| refused())?;
    if price > max_price() {
        return Err(refused());
    }
    Ok(price.normalize())
}

fn product_conflict(constraint: &str) -> Option<ApiError> {
    (constraint == "products_sku_key")
        .then(|| ApiError::conflict("sku_taken", "a product with this sku exists"))
}

/// Create a product (admin).
#[utoipa::path(post, path = "/api/products", tag = "admin", request_body = NewProduct,
    security(("admin" = [])),
    responses((status = 201, body = Product), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    Json(new): Json<NewProduct>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    let name = validate::text("name", &new.name, 255)?;
    let description = validate::optional_text("description", &new.description, 10_000)?;
    let category = validate::text("category", &new.category, 100)?;
    let price = check_price(&new.price)?;
    let stock = validate::range("stock", new.stock, 0, 1_000_000_000)?;
    let popularity = validate::range("popularity", new.popularity, 0, 1_000_000_000)?;
    let sku = match &new.sku {
        Some(sku) => validate::text("sku", sku, 64)?.to_owned(),
        None => format!("SKU-{:016X}", rand::random::<u64>()),
    };
    let mut conn = state.db.conn().await?;
    // Prices and stock: durable whatever the cluster's setting.
    let tx = conn.durable_transaction().await?;
    let row = tx
        .query_one(
            "INSERT INTO products (sku, name, description, price, category, popularity, active) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &sku,
                &name,
                &description,
                &price,
                &category,
                &popularity,
                &new.active,
            ],
        )
        .await
        .map_err(|e| on_constraint(e, product_conflict))?;
    let id: i64 = row.get(0);
    tx.execute(
        "INSERT INTO inventory (product_id, quantity) VALUES ($1, $2)",
        &[&id, &stock],
    )
    .await?;
    tx.commit().await?;
    drop(conn);
    announce_change(&state, id).await;
    Ok((
        StatusCode::CREATED,
        Json(fetch(&state, ReadFrom::PRIMARY, id, true).await?),
    ))
}

/// Update a product (admin).
#[utoipa::path(patch, path = "/api/products/{id}", tag = "admin", request_body = ProductUpdate,
    params(("id" = i64, Path, description = "Product id")), security(("admin" = [])),
    responses((status = 200, body = Product), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<i64>,
    Json(change): Json<ProductUpdate>,
) -> Result<Json<Product>, ApiError> {
    let name = change
        .name
        .as_deref()
        .map(|v| validate::text("name", v, 255))
        .transpose()?;
    let description = change
        .description
        .as_deref()
        .map(|v| validate::optional_text("description", v, 10_000))
        .transpose()?;
    let category = change
        .category
        .as_deref()
        .map(|v| validate::text("category", v, 100))
        .transpose()?;
    let price = change.price.as_deref().map(check_price).transpose()?;
    let stock = change
        .stock
        .map(|v| validate::range("stock", v, 0, 1_000_000_000))
        .transpose()?;
    let popularity = change
        .popularity
        .map(|v| validate::range("popularity", v, 0, 1_000_000_000))
        .transpose()?;
    let mut conn = state.db.conn().await?;
    // Prices and stock: durable whatever the cluster's setting.
    let tx = conn.durable_transaction().await?;
    let updated = tx
        .execute(
            "UPDATE products SET name = COALESCE($2, name), description = COALESCE($3, description), \
             price = COALESCE($4, price), category = COALESCE($5, category), \
             popularity = COALESCE($6, popularity), active = COALESCE($7, active), updated_at = now() \
             WHERE id = $1",
            &[&id, &name, &description, &price, &category, &popularity, &change.active],
        )
        .await?;
    if updated == 0 {
        return Err(ApiError::NotFound("product"));
    }
    if let Some(stock) = stock {
        tx.execute(
            "INSERT INTO inventory (product_id, quantity) VALUES ($1, $2) \
             ON CONFLICT (product_id) DO UPDATE SET quantity = EXCLUDED.quantity",
            &[&id, &stock],
        )
        .await?;
    }
    tx.commit().await?;
    drop(conn);
    announce_change(&state, id).await;
    Ok(Json(fetch(&state, ReadFrom::PRIMARY, id, true).await?))
}

/// Drops this instance's cached copies of the product (and every list and search) at once, and
/// tells the other instances through PostgreSQL `NOTIFY`, with the primary's WAL position after
/// the change: until a replica has replayed it, no answer read from that replica is cached. A failed
/// NOTIFY is logged, not fatal: other instances then serve the old entry until its TTL (at
/// most 30 s) runs out.
async fn announce_change(state: &AppState, id: i64) {
    let position = state.db.position().await.ok();
    state.optimizer.invalidate_product_at(id, position);
    let notified = async {
        let conn = state.db.conn().await?;
        let payload = match position {
            Some(lsn) => format!("{id} {}", optimizer::balance::format_lsn(lsn)),
            None => id.to_string(),
        };
        conn.execute("SELECT pg_notify('shop_cache', $1)", &[&payload])
            .await?;
        Ok::<_, ApiError>(())
    };
    if let Err(err) = notified.await {
        tracing::warn!(error = %err, product = id, "could not notify other instances of a product change");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn prices_are_exact_and_bounded() {
        let ok = |s: &str| check_price(s).is_ok();
        assert!(ok("1299.99"));
        assert!(ok("0"));
        assert!(ok("0.5"));
        assert!(ok("9999999999.99"));
        assert_eq!(check_price("19.90").ok(), Decimal::from_str("19.9").ok());
        for refused in [
            "19.999",
            "-1",
            "10000000000",
            "",
            "1.",
            ".5",
            "01",
            "1_000",
            "1e3",
            " 1",
        ] {
            assert!(!ok(refused), "{refused:?}");
        }
    }
}
