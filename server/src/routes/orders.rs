//! The caller's own orders. Queries always filter by the caller's user id, so another user's
//! order is indistinguishable from one that does not exist (404).

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::Conn;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path, Query};
use crate::routes::Routes;
use crate::validate::Page;
use axum::extract::State;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tokio_postgres::Row;
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new()
        .get("/api/orders", list)
        .get("/api/orders/{id}", detail)
}

/// One line of an order, at the price charged.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// Product id.
    pub product_id: i64,
    /// Product name.
    pub name: String,
    /// Units.
    pub quantity: i32,
    /// Unit price charged.
    #[schema(value_type = String)]
    pub price: Decimal,
    /// price × quantity.
    #[schema(value_type = String)]
    pub line_total: Decimal,
}

/// An order.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Order id.
    pub id: i64,
    /// `pending`, `paid`, `shipped`, `delivered` or `cancelled`.
    pub status: String,
    /// Amount charged.
    #[schema(value_type = String)]
    pub total: Decimal,
    /// How it is paid.
    pub payment_method: String,
    /// Where it goes.
    #[schema(value_type = Object)]
    pub shipping_address: serde_json::Value,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// What was bought.
    pub items: Vec<OrderItem>,
}

/// A page of orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    /// Orders on this page.
    pub orders: Vec<Order>,
    /// 1-based page number.
    pub page: u32,
    /// Page size.
    pub limit: u32,
    /// Whether another page follows.
    pub has_more: bool,
}

/// Paging parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderParams {
    /// 1-based page number (default 1); page × limit at most 10,000 (`limits.max_result_window`).
    #[param(minimum = 1, maximum = 10_000)]
    pub page: Option<u32>,
    /// Page size (default 20, at most 100: `limits.max_page_size`).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

const ORDER_COLUMNS: &str = "id, status, total, payment_method, shipping_address, created_at";

/// Reads order rows and attaches their items with one more query.
async fn with_items(conn: &Conn, rows: &[Row]) -> Result<Vec<Order>, ApiError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    let item_rows = conn
        .query(
            "SELECT oi.order_id, oi.product_id, p.name, oi.quantity, oi.price FROM order_items oi \
             JOIN products p ON p.id = oi.product_id WHERE oi.order_id = ANY($1) ORDER BY oi.id",
            &[&ids],
        )
        .await?;
    let mut items: HashMap<i64, Vec<OrderItem>> = HashMap::new();
    for r in &item_rows {
        let price: Decimal = r.get(4);
        let quantity: i32 = r.get(3);
        items.entry(r.get(0)).or_default().push(OrderItem {
            product_id: r.get(1),
            name: r.get(2),
            quantity,
            price,
            line_total: price * Decimal::from(quantity),
        });
    }
    Ok(rows
        .iter()
        .map(|r| {
            let id: i64 = r.get(0);
            Order {
                id,
                status: r.get(1),
                total: r.get(2),
                payment_method: r.get(3),
                shipping_address: r.get(4),
                created_at: r.get(5),
                items: items.remove(&id).unwrap_or_default(),
            }
        })
        .collect())
}

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/api/orders", tag = "orders", params(OrderParams), security(("bearer" = [])),
    responses((status = 200, body = OrderPage), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<OrderParams>,
) -> Result<Json<OrderPage>, ApiError> {
    let limits = &state.config.limits;
    let page = Page::within(params.page, params.limit, limits)?;
    let conn = state.db.conn().await?;
    let rows = conn
        .query(
            &format!(
                "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
            ),
            &[&user.id, &page.fetch(), &page.offset()],
        )
        .await?;
    let has_more = rows.len() > page.limit as usize;
    let orders = with_items(&conn, &rows[..rows.len().min(page.limit as usize)]).await?;
    Ok(Json(OrderPage {
        orders,
        page: page.page,
        limit: page.limit,
        has_more,
    }))
}

/// One of the caller's orders.
#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "Order id")),
    security(("bearer" = [])), responses((status = 200, body = Order), (status = 404, body = ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> Result<Json<Order>, ApiError> {
    let conn = state.db.conn().await?;
    let rows = conn
        .query(
            &format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND user_id = $2"),
            &[&id, &user.id],
        )
        .await?;
    with_items(&conn, &rows)
        .await?
        .pop()
        .map(Json)
        .ok_or(ApiError::NotFound("order"))
}
