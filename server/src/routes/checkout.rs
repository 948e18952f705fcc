//! Checkout: the cart becomes an order in one transaction.
//!
//! Stock is taken with a conditional `UPDATE ... WHERE quantity >= n`, so under any concurrency
//! the last unit is sold exactly once. An `Idempotency-Key` header works as Stripe's does: the
//! same key with the same body gets the same response (the order is created once); the same key
//! with a different body is a 422; a retry while the first request still runs is a 409.

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::Conn;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::routes::Routes;
use crate::routes::orders::{Order, OrderItem};
use crate::validate;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().post("/api/checkout", checkout)
}

/// The request header naming an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a response that replays an earlier one.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long an unfinished key stays locked before a retry may take it over (the request that
/// held it must have died: its transaction, and so its order, never committed).
const ABANDONED_AFTER: &str = "60 seconds";

/// Accepted payment methods.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// Credit card.
    CreditCard,
    /// Debit card.
    DebitCard,
    /// PayPal.
    Paypal,
    /// Bank transfer.
    BankTransfer,
    /// Cash on delivery.
    CashOnDelivery,
}

impl PaymentMethod {
    fn as_str(self) -> &'static str {
        match self {
            Self::CreditCard => "credit_card",
            Self::DebitCard => "debit_card",
            Self::Paypal => "paypal",
            Self::BankTransfer => "bank_transfer",
            Self::CashOnDelivery => "cash_on_delivery",
        }
    }
}

/// Where the order goes. Every field is trimmed and must then hold something, within its
/// length, with no control characters (tabs and newlines aside).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShippingAddress {
    /// Recipient name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = validate::text_100)]
    pub name: Option<String>,
    /// Street and number.
    #[schema(schema_with = validate::text_200)]
    pub street: String,
    /// City.
    #[schema(schema_with = validate::text_100)]
    pub city: String,
    /// State or region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = validate::text_100)]
    pub state: Option<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = validate::text_20)]
    pub postal_code: Option<String>,
    /// Country.
    #[schema(schema_with = validate::text_100)]
    pub country: String,
}

/// Checkout request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckoutRequest {
    /// How the order is paid.
    pub payment_method: PaymentMethod,
    /// Where it goes.
    pub shipping_address: ShippingAddress,
}

impl CheckoutRequest {
    /// Trims and checks every address field.
    fn validated(mut self) -> Result<Self, ApiError> {
        let a = &mut self.shipping_address;
        a.street = validate::text("shippingAddress.street", &a.street, 200)?.to_owned();
        a.city = validate::text("shippingAddress.city", &a.city, 100)?.to_owned();
        a.country = validate::text("shippingAddress.country", &a.country, 100)?.to_owned();
        for (field, value, max) in [
            ("shippingAddress.name", &mut a.name, 100),
            ("shippingAddress.state", &mut a.state, 100),
            ("shippingAddress.postalCode", &mut a.postal_code, 20),
        ] {
            if let Some(v) = value {
                *v = validate::text(field, v, max)?.to_owned();
            }
        }
        Ok(self)
    }
}

/// Place an order from the caller's cart.
#[utoipa::path(post, path = "/api/checkout", tag = "checkout", request_body = CheckoutRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: same key and body, same response")),
    security(("bearer" = [])),
    responses((status = 201, body = Order), (status = 409, body = ErrorBody, description = "Out of stock, or the same key is still being processed"),
              (status = 422, body = ErrorBody, description = "Empty cart, invalid body, or key reused with another body")))]
pub async fn checkout(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(request): Json<CheckoutRequest>,
) -> Result<Response, ApiError> {
    let request = request.validated()?;
    let key = idempotency_key(&headers)?;
    let mut conn = state.db.conn().await?;
    if let Some(key) = &key {
        let fingerprint =
            Sha256::digest(serde_json::to_vec(&request).map_err(anyhow::Error::from)?).to_vec();
        if let Some((status, body)) = claim(&conn, user, key, &fingerprint).await? {
            let mut response = (status, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            return Ok(response);
        }
    }
    match place_order(&mut conn, user, &request, key.as_deref()).await {
        Ok(order) => Ok((StatusCode::CREATED, axum::Json(order)).into_response()),
        Err(err) => {
            if let Some(key) = &key {
                if matches!(err, ApiError::Unavailable { .. }) {
                    // The connection may have died around COMMIT, so the outcome is unknown:
                    // release the key on a fresh connection. Its statement waits for the first
                    // transaction's lock on the key's row, and only releases an unsettled key:
                    // a committed order keeps its recorded answer (the retry replays it), an
                    // aborted one frees the key (the retry places it, once).
                    if let Ok(fresh) = state.db.conn().await {
                        settle_failure(&fresh, user, key, &err).await;
                    }
                } else {
                    settle_failure(&conn, user, key, &err).await;
                }
            }
            Err(err)
        }
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// Claims the key for this request. `Ok(None)`: go ahead. `Ok(Some(..))`: replay that response.
async fn claim(
    conn: &Conn,
    user: AuthUser,
    key: &str,
    fingerprint: &[u8],
) -> Result<Option<(StatusCode, serde_json::Value)>, ApiError> {
    // Bounded: each pass either claims, answers, or lost a race with a concurrent delete.
    for _ in 0..3 {
        let inserted = conn
            .execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&user.id, &key, &fingerprint],
            )
            .await?;
        if inserted == 1 {
            return Ok(None);
        }
        let Some(row) = conn
            .query_opt(
                &format!(
                    "SELECT request_hash, status_code, response_body, locked_at < now() - interval '{ABANDONED_AFTER}' \
                     FROM idempotency_keys WHERE user_id = $1 AND key = $2"
                ),
                &[&user.id, &key],
            )
            .await?
        else {
            continue;
        };
        let stored_hash: Vec<u8> = row.get(0);
        if stored_hash != fingerprint {
            return Err(ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        if let (Some(status), Some(body)) = (
            row.get::<_, Option<i16>>(1),
            row.get::<_, Option<serde_json::Value>>(2),
        ) {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok());
            return Ok(Some((status.unwrap_or(StatusCode::OK), body)));
        }
        let abandoned: bool = row.get(3);
        if abandoned {
            let taken = conn
                .execute(
                    &format!(
                        "UPDATE idempotency_keys SET locked_at = now() WHERE user_id = $1 AND key = $2 \
                         AND status_code IS NULL AND locked_at < now() - interval '{ABANDONED_AFTER}'"
                    ),
                    &[&user.id, &key],
                )
                .await?;
            if taken == 1 {
                return Ok(None);
            }
        }
        return Err(ApiError::conflict(
            "idempotency_key_in_progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        ));
    }
    Err(ApiError::conflict(
        "idempotency_key_in_progress",
        "the Idempotency-Key is contended; retry shortly",
    ))
}

/// After a failed attempt: a client error is recorded (a retry gets the same answer); a server
/// error releases the key so the client may retry for real.
async fn settle_failure(conn: &Conn, user: AuthUser, key: &str, err: &ApiError) {
    let result = match err.client_response() {
        Some((status, body)) => {
            let status = i16::try_from(status.as_u16()).unwrap_or(i16::MAX);
            conn.execute(
                "UPDATE idempotency_keys SET status_code = $3, response_body = $4 WHERE user_id = $1 AND key = $2",
                &[&user.id, &key, &status, &body],
            )
            .await
        }
        None => {
            conn.execute(
                "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND status_code IS NULL",
                &[&user.id, &key],
            )
            .await
        }
    };
    if let Err(db_err) = result {
        tracing::warn!(error = %db_err, "could not settle idempotency key; it will be taken over after the lock expires");
    }
}

/// The transaction: lock the cart, take stock, write the order, empty the cart, and record the
/// idempotent response, all or nothing.
async fn place_order(
    conn: &mut Conn,
    user: AuthUser,
    request: &CheckoutRequest,
    key: Option<&str>,
) -> Result<Order, ApiError> {
    // An acknowledged order must survive a crash: durable whatever the cluster's setting.
    let tx = conn.durable_transaction().await?;
    // Product order is fixed (by id) so concurrent checkouts lock inventory rows in the same
    // order and cannot deadlock.
    let lines = tx
        .query(
            "SELECT c.product_id, p.name, p.price, c.quantity, p.active FROM cart_items c \
             JOIN products p ON p.id = c.product_id WHERE c.user_id = $1 ORDER BY c.product_id FOR UPDATE OF c",
            &[&user.id],
        )
        .await?;
    if lines.is_empty() {
        return Err(ApiError::unprocessable("cart_empty", "the cart is empty"));
    }
    let mut items = Vec::with_capacity(lines.len());
    for line in &lines {
        let (product_id, name, price, quantity, active): (i64, String, Decimal, i32, bool) = (
            line.get(0),
            line.get(1),
            line.get(2),
            line.get(3),
            line.get(4),
        );
        if !active {
            return Err(ApiError::conflict(
                "product_unavailable",
                format!("{name} is no longer sold"),
            ));
        }
        let taken = tx
            .execute(
                "UPDATE inventory SET quantity = quantity - $2 WHERE product_id = $1 AND quantity >= $2",
                &[&product_id, &quantity],
            )
            .await?;
        if taken == 0 {
            return Err(ApiError::conflict(
                "out_of_stock",
                format!("not enough stock of {name}"),
            ));
        }
        items.push(OrderItem {
            product_id,
            name,
            quantity,
            price,
            line_total: price * Decimal::from(quantity),
        });
    }
    let total: Decimal = items.iter().map(|i| i.line_total).sum();
    let address = serde_json::to_value(&request.shipping_address).map_err(anyhow::Error::from)?;
    let order_row = tx
        .query_one(
            "INSERT INTO orders (user_id, total, payment_method, shipping_address) VALUES ($1, $2, $3, $4) \
             RETURNING id, status, created_at",
            &[&user.id, &total, &request.payment_method.as_str(), &address],
        )
        .await?;
    let order = Order {
        id: order_row.get(0),
        status: order_row.get(1),
        total,
        payment_method: request.payment_method.as_str().to_owned(),
        shipping_address: address,
        created_at: order_row.get(2),
        items,
    };
    let product_ids: Vec<i64> = order.items.iter().map(|i| i.product_id).collect();
    let quantities: Vec<i32> = order.items.iter().map(|i| i.quantity).collect();
    let prices: Vec<Decimal> = order.items.iter().map(|i| i.price).collect();
    tx.execute(
        "INSERT INTO order_items (order_id, product_id, quantity, price) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::int[], $4::numeric[])",
        &[&order.id, &product_ids, &quantities, &prices],
    )
    .await?;
    // Only the lines this order locked and bought: an item added concurrently stays in the cart.
    tx.execute(
        "DELETE FROM cart_items WHERE user_id = $1 AND product_id = ANY($2)",
        &[&user.id, &product_ids],
    )
    .await?;
    if let Some(key) = key {
        let body = serde_json::to_value(&order).map_err(anyhow::Error::from)?;
        tx.execute(
            "UPDATE idempotency_keys SET status_code = 201, response_body = $3 WHERE user_id = $1 AND key = $2",
            &[&user.id, &key, &body],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(order)
}
