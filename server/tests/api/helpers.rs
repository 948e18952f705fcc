//! Test harness: each test gets its own freshly migrated database and its own server on a
//! random port, talking to the real PostgreSQL named by `DATABASE_URL` (set by `make test`).

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use server::{Application, Config};
use std::future::Future;
use std::sync::Once;
use std::time::{Duration, Instant};

/// The admin token every test server is configured with.
pub const ADMIN: &str = "test-admin-token-0123456789";

/// A running server and a handle on its database.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    /// HTTP client.
    pub client: Client,
    /// A direct connection to the test database, for setting up and checking state.
    pub db: tokio_postgres::Client,
    db_name: String,
    base_url: String,
    /// Per-test folder for request logs and the optimizer log.
    pub scratch: std::path::PathBuf,
    db_url: String,
}

/// Server logs appear only when `TEST_LOG` is set, as in zero-to-production.
fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        }
    });
}

fn with_dbname(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to PostgreSQL at DATABASE_URL ({e}); run tests with `make test`")
        });
    tokio::spawn(connection);
    client
}

/// How long [`eventually`] waits between two probes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Waits for something the test cannot be told about directly (a background thread, another
/// instance, a timer in the server): runs `probe` every 50 ms until it returns `Ok`, and returns
/// that value. `probe` returns `Err` with what it saw instead. Once `deadline` has passed this
/// panics, naming `what` and the last thing seen; the last probe starts at the deadline (to the
/// timer's precision), not a full interval after it.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let seen = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        let left = deadline.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "{what}: not within {deadline:?}; last seen: {seen}"
        );
        tokio::time::sleep(left.min(POLL_INTERVAL)).await;
    }
}

/// A response header as text; panics when it is missing or not ASCII.
pub fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("missing header {name}"))
}

/// A test server's configuration: loopback, any free port, the test admin token, and logs in
/// the test's scratch folder.
fn server_config(db_url: &str, scratch: &std::path::Path, pool_size: usize) -> Config {
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.database.url = Some(db_url.to_owned());
    config.database.pool_size = pool_size;
    config.auth.admin_token = Some(ADMIN.into());
    config.telemetry.log_dir = scratch.join("data/logs");
    config.telemetry.optimizer_log = scratch.join("logs/ml-optimizer.log");
    // No model unless a test installs one; and a retrain never writes into the source tree.
    config.models.dir = scratch.join("models");
    config
}

/// Builds and spawns a server; returns its base URL.
async fn start(config: Config) -> String {
    let app = Application::build(config).await.expect("server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    address
}

/// A fixed concurrency limit of `n` (no adaptation), for tests about admission.
pub fn fixed_limit(n: u32) -> impl FnOnce(&mut Config) {
    move |config| {
        config.optimization.min_concurrency = n;
        config.optimization.max_concurrency = n;
    }
}

/// Starts a server on a fresh database with the default configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server on a fresh database, letting the test adjust the configuration first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_until(adjust, std::future::pending()).await.0
}

/// [`spawn_app_with`], the server draining when `signal` resolves (to whether with the grace
/// period, as SIGTERM); also returns the server's task, which ends when the drain is done.
pub async fn spawn_app_until(
    adjust: impl FnOnce(&mut Config),
    signal: impl Future<Output = bool> + Send + 'static,
) -> (TestApp, tokio::task::JoinHandle<anyhow::Result<()>>) {
    init_logging();
    let base_url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must be set; run tests with `make test`");
    let db_name = format!("test_{}", uuid::Uuid::new_v4().simple());
    connect(&base_url)
        .await
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .expect("create test database");
    let url = with_dbname(&base_url, &db_name);

    let scratch = std::env::temp_dir().join(format!("shop-{db_name}"));
    let mut config = server_config(&url, &scratch, 16);
    adjust(&mut config);
    // Replicas are named by their cluster's URL; the test's database is on them too.
    for replica in &mut config.database.replicas {
        *replica = with_dbname(replica, &db_name);
    }
    let app = Application::build(config).await.expect("server starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let served = tokio::spawn(app.run_until(signal));

    let db = connect(&url).await;
    let url_for_peer = url.clone();
    // The five sample products, through the real seed path.
    let mut seed_config = Config::default();
    seed_config.database.url = Some(url);
    server::seed::run(&seed_config, 0, 1).await.expect("seed");
    let app = TestApp {
        address,
        client: Client::new(),
        db,
        db_name,
        base_url,
        scratch,
        db_url: url_for_peer,
    };
    (app, served)
}

impl TestApp {
    /// A direct connection to this test's database on another server of the cluster (a
    /// replica), given its URL.
    pub async fn connect_on(&self, cluster_url: &str) -> tokio_postgres::Client {
        connect(&with_dbname(cluster_url, &self.db_name)).await
    }
}

/// Runs `sql` on a new connection to `url` and waits for it, from a separate thread with its own
/// runtime: for `Drop`, which cannot await, in a test whose runtime may be single-threaded.
/// Best effort: a failure is ignored.
pub fn execute_from_drop(url: String, sql: String) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            {
                tokio::spawn(connection);
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
        execute_from_drop(
            self.base_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name),
        );
    }
}

/// How many of the server's database sessions are waiting for a lock now, as `session` (another
/// session on the test database) sees them.
pub async fn server_sessions_waiting_on_locks(session: &tokio_postgres::Client) -> i64 {
    session
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'shop-api' AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("activity")
        .get(0)
}

/// A signed-in user.
#[derive(Debug, Clone)]
pub struct User {
    /// Bearer token.
    pub token: String,
    /// User id.
    pub id: i64,
}

impl TestApp {
    /// Starts a second server instance on the same database (another node behind a load
    /// balancer) and returns its base URL.
    pub async fn spawn_peer(&self) -> String {
        self.spawn_peer_with(|_| {}).await
    }

    /// [`Self::spawn_peer`], letting the test adjust the peer's configuration first.
    pub async fn spawn_peer_with(&self, adjust: impl FnOnce(&mut Config)) -> String {
        let mut config = server_config(&self.db_url, &self.scratch.join("peer"), 8);
        adjust(&mut config);
        start(config).await
    }

    /// Another session on the test database, as a second client of PostgreSQL would open.
    pub async fn another_session(&self) -> tokio_postgres::Client {
        connect(&self.db_url).await
    }

    /// Another session that takes the products table (`ACCESS EXCLUSIVE`) and holds it until
    /// the test sends it `COMMIT`: every product read waits for it, as in a stall.
    pub async fn lock_products(&self) -> tokio_postgres::Client {
        let locker = self.another_session().await;
        locker
            .batch_execute("BEGIN; LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock");
        locker
    }

    /// Everything the request log holds so far (`data/logs/*.ndjson` in the scratch folder),
    /// as text and as records. A line the writer is still in the middle of is left out.
    pub fn request_log(&self) -> (String, Vec<contract::RequestRecord>) {
        let mut text = String::new();
        if let Ok(files) = std::fs::read_dir(self.scratch.join("data/logs")) {
            for file in files {
                let path = file.expect("entry").path();
                if path.extension().is_some_and(|e| e == "ndjson") {
                    let file = std::fs::read_to_string(path).expect("log file");
                    let complete = file.rfind('\n').map_or(0, |end| end + 1);
                    text.push_str(&file[..complete]);
                }
            }
        }
        let records = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect();
        (text, records)
    }

    /// Adds `n` generated products through the real seed path (`server seed --products n`).
    pub async fn seed_products(&self, n: u64) {
        let mut config = Config::default();
        config.database.url = Some(self.db_url.clone());
        server::seed::run(&config, n, 7)
            .await
            .expect("seed products");
    }

    /// Absolute URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// GET without credentials.
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// GET with a bearer token.
    pub async fn get_as(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// `GET /api/ml-metrics` as the admin, parsed.
    pub async fn ml_metrics(&self) -> Value {
        self.get_as(ADMIN, "/api/ml-metrics")
            .await
            .json()
            .await
            .expect("ml-metrics json")
    }

    /// POST JSON with an optional bearer token.
    pub async fn post_json(&self, token: Option<&str>, path: &str, body: &Value) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }

    /// PATCH JSON with a bearer token.
    pub async fn patch_json(&self, token: &str, path: &str, body: &Value) -> Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// DELETE with a bearer token.
    pub async fn delete_as(&self, token: &str, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// Registers a user through the API.
    pub async fn register(&self, email: &str, password: &str) -> User {
        let response = self
            .post_json(
                None,
                "/api/auth/register",
                &json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "register {email}");
        let body: Value = response.json().await.expect("json");
        User {
            token: body["token"].as_str().expect("token").to_owned(),
            id: body["user"]["id"].as_i64().expect("id"),
        }
    }

    /// Creates `n` users with sessions directly in the database (no password hashing), for
    /// tests that need many shoppers at once. The tokens are real: they go through the same
    /// lookup as tokens from the login endpoint.
    pub async fn users_via_db(&self, n: usize) -> Vec<User> {
        let mut users = Vec::with_capacity(n);
        for i in 0..n {
            let row = self
                .db
                .query_one(
                    "INSERT INTO users (email, password_hash) VALUES ($1, 'unusable') RETURNING id",
                    &[&format!("bulk{i}@example.com")],
                )
                .await
                .expect("insert user");
            let id: i64 = row.get(0);
            let (token, hash) = server::auth::new_token();
            self.db
                .execute(
                    "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, now() + interval '1 hour')",
                    &[&hash, &id],
                )
                .await
                .expect("insert session");
            users.push(User { token, id });
        }
        users
    }

    /// Id of a seed product by name.
    pub async fn product_id(&self, name: &str) -> i64 {
        self.db
            .query_one("SELECT id FROM products WHERE name = $1", &[&name])
            .await
            .expect("product")
            .get(0)
    }

    /// Sets a product's stock.
    pub async fn set_stock(&self, product_id: i64, quantity: i32) {
        self.db
            .execute(
                "UPDATE inventory SET quantity = $2 WHERE product_id = $1",
                &[&product_id, &quantity],
            )
            .await
            .expect("set stock");
    }

    /// A product's stock.
    pub async fn stock(&self, product_id: i64) -> i32 {
        self.db
            .query_one(
                "SELECT quantity FROM inventory WHERE product_id = $1",
                &[&product_id],
            )
            .await
            .expect("stock")
            .get(0)
    }

    /// Number of rows in a table (names are test constants, never input).
    pub async fn count(&self, table: &str) -> i64 {
        self.db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0)
    }

    /// Puts `quantity` of a product in the user's cart through the API.
    pub async fn add_to_cart(&self, user: &User, product_id: i64, quantity: i32) {
        let response = self
            .post_json(
                Some(&user.token),
                "/api/cart",
                &json!({"productId": product_id, "quantity": quantity}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK, "add to cart");
    }
}

/// The product names of a list or search answer, in order.
/// The admission numbers of one priority (`low`, `critical`, ...) in an `/api/ml-metrics` answer.
pub fn admission_of(metrics: &Value, priority: &str) -> Value {
    metrics["admission"]
        .as_array()
        .expect("admission")
        .iter()
        .find(|p| p["priority"] == priority)
        .unwrap_or_else(|| panic!("no {priority} priority in {}", metrics["admission"]))
        .clone()
}

/// The tracked statements of an `/api/ml-metrics` answer whose text contains `text`.
pub fn statements_with<'a>(metrics: &'a Value, text: &str) -> Vec<&'a Value> {
    metrics["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .filter(|q| q["statement"].as_str().is_some_and(|s| s.contains(text)))
        .collect()
}

pub fn product_names(body: &Value) -> Vec<String> {
    body["products"]
        .as_array()
        .expect("products")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect()
}

/// A valid checkout body (the README's example).
pub fn checkout_body() -> Value {
    json!({
        "paymentMethod": "credit_card",
        "shippingAddress": {"street": "123 Main St", "city": "Bangkok", "country": "Thailand"}
    })
}

/// Asserts the response is our JSON error with this status and code; returns the message.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    body["error"]["message"]
        .as_str()
        .expect("message")
        .to_owned()
}
