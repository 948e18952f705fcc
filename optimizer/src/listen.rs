//! Cache invalidation across instances: every instance `LISTEN`s on PostgreSQL's `shop_cache`
//! channel, to which a product write sends `NOTIFY shop_cache, '<id>'` in its transaction, and
//! drops its cached answers for that product.

use std::sync::Arc;
use std::time::Duration;

/// Starts the listener on a connection of its own (a pooled one would be handed back), calling
/// `invalidate` with each changed product's id. Reconnects with a bounded back-off.
pub fn spawn(
    pg: tokio_postgres::Config,
    invalidate: Arc<dyn Fn(i64) + Send + Sync>,
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
                                    if let Ok(id) = n.payload().parse::<i64>() {
                                        invalidate(id);
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
