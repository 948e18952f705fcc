//! The signed-in user's cart. Every statement is scoped by the caller's user id, so one user can
//! never read or change another's cart.

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::Conn;
use crate::error::{ApiError, ErrorBody, on_constraint};
use crate::extract::{Json, Path};
use crate::routes::Routes;
use crate::validate;
use axum::extract::State;
use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/api/cart", view)
        .post("/api/cart", add)
        .delete("/api/cart", clear)
        .patch("/api/cart/{product_id}", set_quantity)
        .delete("/api/cart/{product_id}", remove)
}

/// Most units of one product a cart may hold.
pub const MAX_QUANTITY: i32 = 99;

/// One line of the cart.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CartItem {
    /// Product id.
    pub product_id: i64,
    /// Product name.
    pub name: String,
    /// Current unit price (what checkout will charge).
    #[schema(value_type = String)]
    pub price: Decimal,
    /// Units.
    pub quantity: i32,
    /// price × quantity.
    #[schema(value_type = String)]
    pub line_total: Decimal,
}

/// The cart.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cart {
    /// Lines, oldest first.
    pub items: Vec<CartItem>,
    /// Total units.
    pub item_count: i64,
    /// Sum of line totals.
    #[schema(value_type = String)]
    pub total: Decimal,
}

/// Adds units of a product.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddItem {
    /// Product id.
    #[serde(deserialize_with = "validate::whole")]
    pub product_id: i64,
    /// Units to add (1-99, default 1).
    #[serde(default = "one", deserialize_with = "validate::whole")]
    #[schema(minimum = 1, maximum = 99)]
    pub quantity: i32,
}

fn one() -> i32 {
    1
}

/// Sets the units of a product already in the cart.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuantity {
    /// New number of units (1-99).
    #[serde(deserialize_with = "validate::whole")]
    #[schema(minimum = 1, maximum = 99)]
    pub quantity: i32,
}

async fn load(conn: &Conn, user: AuthUser) -> Result<Cart, ApiError> {
    let rows = conn
        .query(
            "SELECT c.product_id, p.name, p.price, c.quantity FROM cart_items c \
             JOIN products p ON p.id = c.product_id WHERE c.user_id = $1 ORDER BY c.created_at, c.id",
            &[&user.id],
        )
        .await?;
    let items: Vec<CartItem> = rows
        .iter()
        .map(|r| {
            let price: Decimal = r.get(2);
            let quantity: i32 = r.get(3);
            CartItem {
                product_id: r.get(0),
                name: r.get(1),
                price,
                quantity,
                line_total: price * Decimal::from(quantity),
            }
        })
        .collect();
    Ok(Cart {
        item_count: items.iter().map(|i| i64::from(i.quantity)).sum(),
        total: items.iter().map(|i| i.line_total).sum(),
        items,
    })
}

/// The caller's cart.
#[utoipa::path(get, path = "/api/cart", tag = "cart", security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 401, body = ErrorBody)))]
pub async fn view(State(state): State<AppState>, user: AuthUser) -> Result<Json<Cart>, ApiError> {
    let conn = state.db.conn().await?;
    Ok(Json(load(&conn, user).await?))
}

fn quantity_limit(constraint: &str) -> Option<ApiError> {
    (constraint == "cart_items_quantity_check").then(|| {
        ApiError::unprocessable(
            "quantity_limit",
            format!("a cart holds at most {MAX_QUANTITY} units of a product"),
        )
    })
}

/// Add a product to the cart (adds to the units already there).
#[utoipa::path(post, path = "/api/cart", tag = "cart", request_body = AddItem, security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn add(
    State(state): State<AppState>,
    user: AuthUser,
    Json(item): Json<AddItem>,
) -> Result<Json<Cart>, ApiError> {
    let quantity = validate::range("quantity", item.quantity, 1, MAX_QUANTITY)?;
    let mut conn = state.db.conn().await?;
    let tx = conn.transaction().await?;
    let product = tx
        .query_opt(
            "SELECT p.price, COALESCE(i.quantity, 0) FROM products p \
             LEFT JOIN inventory i ON i.product_id = p.id WHERE p.id = $1 AND p.active",
            &[&item.product_id],
        )
        .await?
        .ok_or(ApiError::NotFound("product"))?;
    let price: Decimal = product.get(0);
    let stock: i32 = product.get(1);
    let row = tx
        .query_one(
            "INSERT INTO cart_items (user_id, product_id, quantity, price) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, product_id) \
             DO UPDATE SET quantity = cart_items.quantity + EXCLUDED.quantity, price = EXCLUDED.price \
             RETURNING quantity",
            &[&user.id, &item.product_id, &quantity, &price],
        )
        .await
        .map_err(|e| on_constraint(e, quantity_limit))?;
    let in_cart: i32 = row.get(0);
    // Advisory only: checkout re-checks stock atomically; this just tells the shopper early.
    if in_cart > stock {
        return Err(ApiError::conflict(
            "insufficient_stock",
            format!("only {stock} in stock"),
        ));
    }
    tx.commit().await?;
    Ok(Json(load(&conn, user).await?))
}

/// Set the units of a product in the cart.
#[utoipa::path(patch, path = "/api/cart/{product_id}", tag = "cart", request_body = SetQuantity,
    params(("product_id" = i64, Path, description = "Product id")), security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn set_quantity(
    State(state): State<AppState>,
    user: AuthUser,
    Path(product_id): Path<i64>,
    Json(body): Json<SetQuantity>,
) -> Result<Json<Cart>, ApiError> {
    let quantity = validate::range("quantity", body.quantity, 1, MAX_QUANTITY)?;
    let conn = state.db.conn().await?;
    let changed = conn
        .execute(
            "UPDATE cart_items SET quantity = $3 WHERE user_id = $1 AND product_id = $2",
            &[&user.id, &product_id, &quantity],
        )
        .await?;
    if changed == 0 {
        return Err(ApiError::NotFound("cart item"));
    }
    Ok(Json(load(&conn, user).await?))
}

/// Remove a product from the cart.
#[utoipa::path(delete, path = "/api/cart/{product_id}", tag = "cart",
    params(("product_id" = i64, Path, description = "Product id")), security(("bearer" = [])),
    responses((status = 200, body = Cart), (status = 404, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    Path(product_id): Path<i64>,
) -> Result<Json<Cart>, ApiError> {
    let conn = state.db.conn().await?;
    let removed = conn
        .execute(
            "DELETE FROM cart_items WHERE user_id = $1 AND product_id = $2",
            &[&user.id, &product_id],
        )
        .await?;
    if removed == 0 {
        return Err(ApiError::NotFound("cart item"));
    }
    Ok(Json(load(&conn, user).await?))
}

/// Empty the cart.
#[utoipa::path(delete, path = "/api/cart", tag = "cart", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn clear(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    let conn = state.db.conn().await?;
    conn.execute("DELETE FROM cart_items WHERE user_id = $1", &[&user.id])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
