//! Catalogue data: the five sample products, and a generated catalogue of any size.
//!
//! The generated catalogue is deterministic for a given `rng_seed`, spread over several
//! categories of different sizes, with prices that vary by category and a heavily skewed
//! popularity (a few products are very popular, most are rarely viewed), as real shops have.
//! It streams rows with binary `COPY`, so a million products take seconds, not minutes.

use crate::config::Config;
use anyhow::Context;
use futures::pin_mut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use std::fmt;
use std::time::Instant;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// The five sample products: SKU, name, description, price in cents, category, popularity.
const SEED_PRODUCTS: [(&str, &str, &str, i64, &str, i32); 5] = [
    (
        "SEED-0001",
        "Laptop Pro",
        "High-performance laptop",
        129_999,
        "electronics",
        95,
    ),
    (
        "SEED-0002",
        "Wireless Mouse",
        "Ergonomic wireless mouse",
        2_999,
        "electronics",
        87,
    ),
    (
        "SEED-0003",
        "USB-C Cable",
        "Fast charging cable",
        1_999,
        "electronics",
        92,
    ),
    (
        "SEED-0004",
        "Keyboard Mechanical",
        "RGB mechanical keyboard",
        14_999,
        "electronics",
        78,
    ),
    (
        "SEED-0005",
        "Monitor 4K",
        "27-inch 4K monitor",
        59_999,
        "electronics",
        85,
    ),
];

/// Units in stock for each seed product.
const SEED_STOCK: i32 = 100;

/// Categories with their share of the catalogue (weights), typical price in cents, and nouns.
const CATEGORIES: [(&str, u32, i64, &[&str]); 8] = [
    (
        "electronics",
        22,
        15_000,
        &[
            "Headphones",
            "Speaker",
            "Charger",
            "Tablet",
            "Camera",
            "Router",
            "Smartwatch",
            "Drone",
        ],
    ),
    (
        "books",
        18,
        1_800,
        &[
            "Novel",
            "Cookbook",
            "Atlas",
            "Biography",
            "Anthology",
            "Guide",
            "Textbook",
            "Comic",
        ],
    ),
    (
        "home",
        14,
        4_500,
        &[
            "Lamp", "Blanket", "Vase", "Mirror", "Clock", "Rug", "Shelf", "Pillow",
        ],
    ),
    (
        "fashion",
        13,
        3_500,
        &[
            "Jacket", "Sneakers", "Scarf", "Backpack", "Belt", "Hat", "Dress", "Sweater",
        ],
    ),
    (
        "sports",
        10,
        6_000,
        &[
            "Yoga Mat",
            "Dumbbell",
            "Tennis Racket",
            "Helmet",
            "Bike Light",
            "Tent",
            "Ball",
            "Bottle",
        ],
    ),
    (
        "toys",
        9,
        2_500,
        &[
            "Puzzle",
            "Robot Kit",
            "Board Game",
            "Plush Bear",
            "Train Set",
            "Kite",
            "Blocks",
            "Doll",
        ],
    ),
    (
        "garden",
        8,
        3_000,
        &[
            "Hose",
            "Planter",
            "Shovel",
            "Seed Pack",
            "Sprinkler",
            "Gloves",
            "Trimmer",
            "Bench",
        ],
    ),
    (
        "beauty",
        6,
        2_200,
        &[
            "Serum",
            "Shampoo",
            "Perfume",
            "Brush Set",
            "Face Cream",
            "Lip Balm",
            "Nail Kit",
            "Soap",
        ],
    ),
];

const ADJECTIVES: [&str; 16] = [
    "Classic",
    "Compact",
    "Deluxe",
    "Eco",
    "Essential",
    "Premium",
    "Smart",
    "Ultra",
    "Vintage",
    "Wireless",
    "Portable",
    "Pro",
    "Mini",
    "Heavy-Duty",
    "Organic",
    "Modern",
];
const QUALITIES: [&str; 12] = [
    "durable",
    "lightweight",
    "handmade",
    "water-resistant",
    "energy-efficient",
    "ergonomic",
    "soft",
    "high-performance",
    "recyclable",
    "award-winning",
    "quiet",
    "colourful",
];
const USES: [&str; 10] = [
    "everyday use",
    "travel",
    "the office",
    "outdoor adventures",
    "gifts",
    "families",
    "beginners",
    "professionals",
    "small spaces",
    "the weekend",
];

/// What a seed run did.
#[derive(Debug, Default)]
pub struct SeedReport {
    /// Seed products inserted by this run (0 when they were already there).
    pub seed_inserted: u64,
    /// Generated products added by this run.
    pub generated_added: u64,
    /// Generated products present after the run.
    pub generated_total: u64,
    /// Wall time.
    pub seconds: f64,
}

impl fmt::Display for SeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed products inserted: {}; generated products added: {} (now {}); {:.1} s",
            self.seed_inserted, self.generated_added, self.generated_total, self.seconds
        )
    }
}

/// Inserts the sample products if missing, then tops the generated catalogue up to `products`.
///
/// # Errors
/// Any database error; the generated rows are added in one transaction, so a failure adds none.
pub async fn run(config: &Config, products: u64, rng_seed: u64) -> anyhow::Result<SeedReport> {
    let started = Instant::now();
    let (mut client, connection) = config
        .pg_config()?
        .connect(tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let driver = tokio::spawn(connection);
    // Bulk loads legitimately run longer than any request may.
    client.batch_execute("SET statement_timeout = 0").await?;
    let mut report = SeedReport::default();

    let tx = client.transaction().await?;
    for (sku, name, description, cents, category, popularity) in SEED_PRODUCTS {
        let price = Decimal::new(cents, 2);
        let row = tx
            .query_opt(
                "INSERT INTO products (sku, name, description, price, category, popularity) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sku) DO NOTHING RETURNING id",
                &[&sku, &name, &description, &price, &category, &popularity],
            )
            .await?;
        if let Some(row) = row {
            let id: i64 = row.get(0);
            tx.execute(
                "INSERT INTO inventory (product_id, quantity) VALUES ($1, $2)",
                &[&id, &SEED_STOCK],
            )
            .await?;
            report.seed_inserted += 1;
        }
    }
    tx.commit().await?;

    let existing: i64 = client
        .query_one("SELECT count(*) FROM products WHERE sku LIKE 'GEN-%'", &[])
        .await?
        .get(0);
    let existing = u64::try_from(existing).unwrap_or(0);
    if products > existing {
        let tx = client.transaction().await?;
        // A larger pending list lets the GIN index absorb the bulk load in few, large merges.
        tx.batch_execute(
            "SET LOCAL gin_pending_list_limit = '64MB'; SET LOCAL maintenance_work_mem = '256MB'",
        )
        .await?;
        let sink = tx
            .copy_in("COPY products (sku, name, description, price, category, popularity) FROM STDIN BINARY")
            .await?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::VARCHAR,
                Type::VARCHAR,
                Type::TEXT,
                Type::NUMERIC,
                Type::VARCHAR,
                Type::INT4,
            ],
        );
        pin_mut!(writer);
        let mut rng = StdRng::seed_from_u64(rng_seed ^ existing);
        for n in existing + 1..=products {
            let p = generate(&mut rng, n);
            writer
                .as_mut()
                .write(&[
                    &p.sku,
                    &p.name,
                    &p.description,
                    &p.price,
                    &p.category,
                    &p.popularity,
                ])
                .await?;
        }
        writer.finish().await?;
        tx.execute(
            "INSERT INTO inventory (product_id, quantity) \
             SELECT p.id, 20 + abs(hashtext(p.sku)) % 480 FROM products p \
             WHERE p.sku LIKE 'GEN-%' AND NOT EXISTS (SELECT 1 FROM inventory i WHERE i.product_id = p.id)",
            &[],
        )
        .await?;
        tx.commit().await?;
        client
            .batch_execute("ANALYZE products; ANALYZE inventory")
            .await?;
        report.generated_added = products - existing;
    }
    report.generated_total = existing.max(products);
    report.seconds = started.elapsed().as_secs_f64();
    drop(client);
    let _ = driver.await;
    Ok(report)
}

/// One generated product.
struct Generated {
    sku: String,
    name: String,
    description: String,
    price: Decimal,
    category: &'static str,
    popularity: i32,
}

fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &'a [&'a T]) -> &'a T {
    items[rng.random_range(0..items.len())]
}

fn generate(rng: &mut StdRng, n: u64) -> Generated {
    let total_weight: u32 = CATEGORIES.iter().map(|c| c.1).sum();
    let mut roll = rng.random_range(0..total_weight);
    let mut category = CATEGORIES[0];
    for c in CATEGORIES {
        if roll < c.1 {
            category = c;
            break;
        }
        roll -= c.1;
    }
    let (name_cat, _, base_cents, nouns) = category;
    let noun = pick(rng, nouns);
    let adjective = pick(rng, &ADJECTIVES);
    let name = format!("{adjective} {noun} {}", n % 1000);
    let first = pick(rng, &QUALITIES);
    let article = if first.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "An"
    } else {
        "A"
    };
    let description = format!(
        "{article} {first} and {} {} for {}.",
        pick(rng, &QUALITIES),
        noun.to_lowercase(),
        pick(rng, &USES)
    );
    // Prices spread log-uniformly from a fifth to five times the category's typical price.
    let factor: f64 = (rng.random_range(-1.6_f64..1.6)).exp();
    let cents = ((base_cents as f64 * factor) as i64 / 100) * 100 + 99;
    // u^8 puts most products near zero and a few near the top: a long-tailed popularity.
    let u: f64 = rng.random();
    let popularity = (u.powi(8) * 10_000.0) as i32;
    Generated {
        sku: format!("GEN-{n:08}"),
        name,
        description,
        price: Decimal::new(cents, 2),
        category: name_cat,
        popularity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_skewed() {
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        let xs: Vec<Generated> = (1..=2000).map(|n| generate(&mut a, n)).collect();
        let ys: Vec<Generated> = (1..=2000).map(|n| generate(&mut b, n)).collect();
        assert!(
            xs.iter()
                .zip(&ys)
                .all(|(x, y)| x.name == y.name && x.price == y.price)
        );
        let low = xs.iter().filter(|p| p.popularity < 100).count();
        assert!(
            low > 1000,
            "most products should sit in the bottom 1% of popularity, got {low} of 2000"
        );
        assert!(
            xs.iter().any(|p| p.popularity > 5000),
            "a few should be very popular"
        );
        let categories: std::collections::HashSet<_> = xs.iter().map(|p| p.category).collect();
        assert_eq!(categories.len(), CATEGORIES.len());
        assert!(
            xs.iter()
                .all(|p| p.price > Decimal::ZERO && p.price.scale() == 2)
        );
    }
}
