//! Cache invalidation across instances: every instance `LISTEN`s on PostgreSQL's `shop_cache`
//! channel, to which a product write sends `NOTIFY shop_cache, '<id> <lsn>'` once committed
//! (the primary's WAL position by then: until a replica has replayed it, no answer read from
//! that replica is cached; a bare `<id>` is read too), and drops its cached answers for that product.

use std::sync::Arc;
use std::time::Duration;

/// Starts the listener on a connection of its own (a pooled one would be handed back), calling
/// `invalidate` with each changed product's id and the change's WAL position. Reconnects with a
/// bounded back-off.
pub fn spawn(
    pg: tokio_postgres::Config,
    invalidate: Arc<dyn Fn(i64, Option<crate::balance::Lsn>) + Send + Sync>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match pg.connect(tokio_postgres::NoTls).await {
                Ok((client, mut connection)) => {
                    let invalidate = invalidate.clone();
                    let driver = tokio::spawn(async move {
                        while let Some(message) =
                            futures::future::poll_fn(|cx| connection.poll_message(cx)).await
                        {
                            match message {
                                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                    if let Some((id, lsn)) = payload(n.payload()) {
                                        invalidate(id, lsn);
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    });
                    if client.batch_execute("LISTEN shop_cache").await.is_ok() {
                        backoff = Duration::from_millis(500);
                        let _ = driver.await;
                    } else {
                        driver.abort();
                    }
                    drop(client);
                    tracing::warn!("cache invalidation listener disconnected; reconnecting");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cache invalidation listener cannot connect")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

/// Reads a `shop_cache` payload: `<id>` or `<id> <lsn>`.
fn payload(text: &str) -> Option<(i64, Option<crate::balance::Lsn>)> {
    let mut parts = text.split(' ');
    let id = parts.next()?.parse().ok()?;
    let lsn = match parts.next() {
        Some(lsn) => Some(crate::balance::parse_lsn(lsn)?),
        None => None,
    };
    parts.next().is_none().then_some((id, lsn))
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_carry_an_id_and_maybe_a_position() {
        assert_eq!(super::payload("7"), Some((7, None)));
        assert_eq!(super::payload("7 0/16B3748"), Some((7, Some(0x16B_3748))));
        for bad in ["", "x", "7 x", "7 0/1 2"] {
            assert_eq!(super::payload(bad), None, "{bad:?}");
        }
    }
}
