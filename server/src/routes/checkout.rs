//! Checkout: the cart becomes an order in one transaction.
//!
//! Stock is taken with a conditional `UPDATE ... WHERE quantity >= n`, so under any concurrency
//! the last unit is sold exactly once. An `Idempotency-Key` header works as Stripe's does: the
//! same key with the same body gets the same response (the order is created once); the same key
//! with a different body is a 422.
//!
//! The key is claimed inside the order's own transaction, as its first statement: the order and
//! the answer recorded under the key commit together or not at all. A retry while the first
//! request still runs waits on the key's row (the unique index) and then replays its answer, or
//! places the order if the first one rolled back. Whatever ends the first request (an error, a
//! dropped connection, a crash of the server or of PostgreSQL), its claim goes with its
//! transaction, so the key is free again at once: a retry never waits for a lock to expire and
//! never finds `cart_empty` for an order that exists.

use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::{Conn, Tx};
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
use utoipa::{IntoParams, ToSchema};

/// Routes of this module.
pub fn router() -> Routes {
    Routes::new().post("/api/checkout", checkout)
}

/// The request header naming an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on a response that replays an earlier one.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How long a claim committed without an answer stays locked before a retry may take it over.
/// This version never commits one (claim and answer share the order's transaction); an older
/// server claimed keys in a statement of their own, and one that died left such claims behind.
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

/// The headers of a checkout.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // only its OpenAPI description is used; the handler reads the header itself
struct CheckoutHeaders {
    /// Makes retries safe: same key and body, same response (1-255 visible ASCII characters).
    #[param(rename = "Idempotency-Key", schema_with = idempotency_key_schema)]
    idempotency_key: Option<String>,
}

fn idempotency_key_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .pattern(Some("^[!-~]{1,255}$"))
        .description(Some(
            "Makes retries safe: same key and body, same response (1-255 visible ASCII characters)",
        ))
        .build()
}

/// Place an order from the caller's cart.
#[utoipa::path(post, path = "/api/checkout", tag = "checkout", request_body = CheckoutRequest,
    params(CheckoutHeaders),
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
    let claim = match &key {
        Some(key) => Some(Claim {
            key,
            fingerprint: Sha256::digest(serde_json::to_vec(&request).map_err(anyhow::Error::from)?)
                .to_vec(),
        }),
        None => None,
    };
    let mut conn = state.db.conn().await?;
    match place_order(&mut conn, user, &request, claim.as_ref()).await {
        Ok(Placed::Order(order)) => Ok((StatusCode::CREATED, axum::Json(order)).into_response()),
        Ok(Placed::Replay(status, body)) => {
            let mut response = (status, axum::Json(body)).into_response();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
        Err(err) => {
            // A client error is the answer to this key from now on (a retry gets the same);
            // anything else left nothing behind: the claim rolled back with the transaction.
            if let (Some(claim), Some((status, body))) = (&claim, err.client_response()) {
                record_refusal(&conn, user, claim, status, &body).await;
            }
            Err(err)
        }
    }
}

/// An `Idempotency-Key` and the fingerprint of the request body it was sent with.
struct Claim<'a> {
    key: &'a str,
    fingerprint: Vec<u8>,
}

/// What the order transaction came to.
enum Placed {
    /// A new order.
    Order(Order),
    /// The recorded answer to an earlier request with the same key.
    Replay(StatusCode, serde_json::Value),
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

/// Claims the key, as the first statement of the order's transaction. `Ok(None)`: go ahead.
/// `Ok(Some(..))`: replay that answer. The insert waits while another transaction holds the
/// same key (a concurrent request with it) and then sees what that one committed.
async fn claim(
    tx: &Tx<'_>,
    user: AuthUser,
    claim: &Claim<'_>,
) -> Result<Option<(StatusCode, serde_json::Value)>, ApiError> {
    let inserted = tx
        .execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            &[&user.id, &claim.key, &claim.fingerprint],
        )
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    let row = tx
        .query_one(
            &format!(
                "SELECT request_hash, status_code, response_body, locked_at < now() - interval '{ABANDONED_AFTER}' \
                 FROM idempotency_keys WHERE user_id = $1 AND key = $2"
            ),
            &[&user.id, &claim.key],
        )
        .await?;
    let stored_hash: Vec<u8> = row.get(0);
    if stored_hash != claim.fingerprint {
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
    // A committed claim without an answer: left by a server that claimed keys in a statement of
    // their own (before this version) and died before it answered. Taken over once it is old.
    let abandoned: bool = row.get(3);
    if abandoned {
        let taken = tx
            .execute(
                &format!(
                    "UPDATE idempotency_keys SET locked_at = now() WHERE user_id = $1 AND key = $2 \
                     AND status_code IS NULL AND locked_at < now() - interval '{ABANDONED_AFTER}'"
                ),
                &[&user.id, &claim.key],
            )
            .await?;
        if taken == 1 {
            return Ok(None);
        }
    }
    Err(ApiError::conflict(
        "idempotency_key_in_progress",
        "a request with this Idempotency-Key is still being processed; retry shortly",
    ))
}

/// Records a client error as the answer to the key, unless the key already has one (a
/// concurrent request with it got there first). Best effort: if it fails, a retry runs the
/// request again and most likely gets the same error.
async fn record_refusal(
    conn: &Conn,
    user: AuthUser,
    claim: &Claim<'_>,
    status: StatusCode,
    body: &serde_json::Value,
) {
    let status = i16::try_from(status.as_u16()).unwrap_or(i16::MAX);
    if let Err(err) = conn
        .execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, status_code, response_body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&user.id, &claim.key, &claim.fingerprint, &status, body],
        )
        .await
    {
        tracing::warn!(error = %err, "could not record the refusal under its idempotency key");
    }
}

/// The transaction: lock the cart, take stock, write the order, empty the cart, and record the
/// idempotent response, all or nothing.
async fn place_order(
    conn: &mut Conn,
    user: AuthUser,
    request: &CheckoutRequest,
    key: Option<&Claim<'_>>,
) -> Result<Placed, ApiError> {
    // An acknowledged order must survive a crash: durable whatever the cluster's setting.
    let tx = conn.durable_transaction().await?;
    if let Some(key) = key
        && let Some((status, body)) = claim(&tx, user, key).await?
    {
        return Ok(Placed::Replay(status, body));
    }
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
            &[&user.id, &key.key, &body],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Placed::Order(order))
}
