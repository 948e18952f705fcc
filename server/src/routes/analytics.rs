//! Sales analytics for the shop's operators (admin only).

use crate::app::AppState;
use crate::auth::Admin;
use crate::db::ReadFrom;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Query, WriteLsnHeader};
use crate::routes::Routes;
use crate::validate;
use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().get("/api/analytics", analytics)
}

/// The period and how many top products to show.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsParams {
    /// Start (RFC 3339, inclusive); default 30 days before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive); default now.
    pub to: Option<DateTime<Utc>>,
    /// How many top products (1-50, default 5).
    #[param(minimum = 1, maximum = 50)]
    pub top: Option<u32>,
}

/// The reported period.
#[derive(Debug, Serialize, ToSchema)]
pub struct Period {
    /// Inclusive start.
    pub from: DateTime<Utc>,
    /// Exclusive end.
    pub to: DateTime<Utc>,
}

/// A best-selling product.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopProduct {
    /// Product id.
    pub product_id: i64,
    /// Product name.
    pub name: String,
    /// Units sold in the period.
    pub units_sold: i64,
    /// Revenue from it in the period.
    #[schema(value_type = String)]
    pub revenue: Decimal,
}

/// Sales over a period (cancelled orders excluded).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analytics {
    /// The period covered.
    pub period: Period,
    /// Revenue.
    #[schema(value_type = String)]
    pub revenue: Decimal,
    /// Number of orders.
    pub orders: i64,
    /// Revenue per order (0 with no orders).
    #[schema(value_type = String)]
    pub average_order_value: Decimal,
    /// Best sellers by revenue.
    pub top_products: Vec<TopProduct>,
}

/// Revenue, orders and top products over a period.
#[utoipa::path(get, path = "/api/analytics", tag = "admin", params(AnalyticsParams, WriteLsnHeader), security(("admin" = [])),
    responses((status = 200, body = Analytics), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn analytics(
    State(state): State<AppState>,
    _admin: Admin,
    read_from: ReadFrom,
    Query(params): Query<AnalyticsParams>,
) -> Result<Json<Analytics>, ApiError> {
    let to = params.to.unwrap_or_else(Utc::now);
    let from = match params.from {
        Some(from) => from,
        None => to
            .checked_sub_signed(Duration::days(30))
            .ok_or_else(|| ApiError::bad_request("invalid_period", "to is too early"))?,
    };
    if from >= to || to - from > Duration::days(366) {
        return Err(ApiError::bad_request(
            "invalid_period",
            "from must be before to, at most 366 days apart",
        ));
    }
    let top = i64::from(validate::range("top", params.top.unwrap_or(5), 1, 50)?);
    let mut conn = state.db.read(read_from).await?;
    let totals = conn
        .query_one(
            "SELECT COALESCE(sum(total), 0), count(*) FROM orders \
             WHERE created_at >= $1 AND created_at < $2 AND status <> 'cancelled'",
            &[&from, &to],
        )
        .await?;
    let rows = conn
        .query(
            "SELECT oi.product_id, p.name, sum(oi.quantity)::bigint, sum(oi.price * oi.quantity) \
             FROM order_items oi JOIN orders o ON o.id = oi.order_id JOIN products p ON p.id = oi.product_id \
             WHERE o.created_at >= $1 AND o.created_at < $2 AND o.status <> 'cancelled' \
             GROUP BY oi.product_id, p.name ORDER BY 4 DESC, 1 LIMIT $3",
            &[&from, &to, &top],
        )
        .await?;
    let revenue: Decimal = totals.get(0);
    let orders: i64 = totals.get(1);
    let average_order_value = if orders == 0 {
        Decimal::ZERO
    } else {
        (revenue / Decimal::from(orders)).round_dp(2)
    };
    Ok(Json(Analytics {
        period: Period { from, to },
        revenue,
        orders,
        average_order_value,
        top_products: rows
            .iter()
            .map(|r| TopProduct {
                product_id: r.get(0),
                name: r.get(1),
                units_sold: r.get(2),
                revenue: r.get(3),
            })
            .collect(),
    }))
}
