//! Configuration: a TOML file, overridden by environment variables, overridden by flags.
//!
//! clap reads each flag and its environment variable (flag wins); whatever neither sets comes
//! from the TOML file, then from the defaults below. The conventional variable names (`DB_HOST`,
//! `DB_USER`, `DB_PASSWORD`, `PORT`) and `DATABASE_URL` are honoured.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use optimizer::config::{
    FeaturesConfig, MetricsConfig, ModelsConfig, OptimizationConfig, TelemetryConfig,
};
use std::time::Duration;

/// `server` command line.
#[derive(Debug, Parser)]
#[command(name = "server", version, about = "The self-tuning shop API")]
pub struct Cli {
    /// Settings shared by every command.
    #[command(flatten)]
    pub overrides: Overrides,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The server's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations, then serve HTTP (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Load the five sample products, and optionally a generated catalogue.
    Seed {
        /// Make sure the catalogue holds this many generated products (besides the
        /// five); re-running with the same number adds nothing.
        #[arg(long, default_value_t = 0)]
        products: u64,
        /// Random seed for the generated catalogue, so runs are reproducible.
        #[arg(long, default_value_t = 42)]
        rng_seed: u64,
    },
}

/// Flags (and their environment variables) that override the TOML file.
#[derive(Debug, Default, Args)]
pub struct Overrides {
    /// TOML configuration file; missing is fine unless given explicitly.
    #[arg(long, env = "SHOP_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "HOST", global = true)]
    pub host: Option<String>,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", global = true)]
    pub port: Option<u16>,
    /// Full PostgreSQL URL; wins over the DB_* parts.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// PostgreSQL host (when no DATABASE_URL).
    #[arg(long, env = "DB_HOST", global = true)]
    pub db_host: Option<String>,
    /// PostgreSQL port (when no DATABASE_URL).
    #[arg(long, env = "DB_PORT", global = true)]
    pub db_port: Option<u16>,
    /// PostgreSQL user (when no DATABASE_URL).
    #[arg(long, env = "DB_USER", global = true)]
    pub db_user: Option<String>,
    /// PostgreSQL password (when no DATABASE_URL).
    #[arg(long, env = "DB_PASSWORD", global = true, hide_env_values = true)]
    pub db_password: Option<String>,
    /// PostgreSQL database name (when no DATABASE_URL).
    #[arg(long, env = "DB_NAME", global = true)]
    pub db_name: Option<String>,
    /// Maximum database connections.
    #[arg(long, env = "DB_POOL_SIZE", global = true)]
    pub db_pool_size: Option<usize>,
    /// Proxies whose `X-Forwarded-For` is believed, comma-separated (`server.trusted_proxies`).
    #[arg(long, env = "TRUSTED_PROXIES", global = true, value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Read replica URLs, comma-separated (`database.replicas`).
    #[arg(
        long,
        env = "DATABASE_REPLICA_URLS",
        global = true,
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub database_replica_urls: Option<Vec<String>>,
    /// Bearer token for admin endpoints; admin endpoints are closed without one.
    #[arg(long, env = "ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A statement is slow when its p95 exceeds this many milliseconds.
    #[arg(long, env = "SLOW_QUERY_P95_MS", global = true)]
    pub slow_query_p95_ms: Option<f64>,
    /// ...over at least this many calls.
    #[arg(long, env = "SLOW_QUERY_MIN_CALLS", global = true)]
    pub slow_query_min_calls: Option<u64>,
    /// Seconds between index advisor passes (0: only when an admin asks).
    #[arg(long, env = "ADVISOR_INTERVAL_SECS", global = true)]
    pub advisor_interval_secs: Option<u64>,
    /// Build verified index suggestions automatically (`true`/`false`).
    #[arg(long, env = "AUTO_INDEX", global = true)]
    pub auto_index: Option<bool>,
    /// Folder with the trained models and their manifest.
    #[arg(long, env = "MODELS_DIR", global = true)]
    pub models_dir: Option<PathBuf>,
    /// A model older than this many hours is stale (0: no limit).
    #[arg(long, env = "MODEL_MAX_AGE_HOURS", global = true)]
    pub model_max_age_hours: Option<f64>,
    /// Minutes between background retraining runs (0: never).
    #[arg(long, env = "TRAINING_INTERVAL", global = true)]
    pub training_interval: Option<u64>,
    /// Folder for request logs (`telemetry.log_dir`).
    #[arg(long, env = "LOG_DIR", global = true)]
    pub log_dir: Option<PathBuf>,
    /// This instance's name in its log file names (`telemetry.instance_id`; default: the host
    /// name).
    #[arg(long, env = "INSTANCE_ID", global = true)]
    pub instance_id: Option<String>,
}

/// The whole configuration, as the TOML file spells it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listener.
    pub server: ServerConfig,
    /// PostgreSQL connection.
    pub database: DatabaseConfig,
    /// Accounts and admin access.
    pub auth: AuthConfig,
    /// Input limits.
    pub limits: LimitsConfig,
    /// Minutes between background retraining runs on the request logs (0 = never); a new model
    /// is adopted only when it beats both the serving one and the online statistics on the most
    /// recent requests it never saw.
    pub training_interval: u64,
    /// Confidence (0-1) a prediction needs before the optimizer acts on it (refresh-ahead,
    /// predicted-cost shedding); below it the optimizer falls back to conservative defaults.
    pub prediction_threshold: f64,
    /// `[optimization]`
    pub optimization: OptimizationConfig,
    /// `[features]`: each part of the optimizer can be switched off.
    pub features: FeaturesConfig,
    /// `[metrics]`
    pub metrics: MetricsConfig,
    /// `[telemetry]`: the request log the trainer learns from.
    pub telemetry: TelemetryConfig,
    /// `[models]`: the ONNX models that predict latency and score anomalies.
    pub models: ModelsConfig,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address.
    pub host: String,
    /// Listen port; 0 picks a free one (tests).
    pub port: u16,
    /// Whole-request timeout in milliseconds.
    pub request_timeout_ms: u64,
    /// After SIGTERM, how long new connections are still accepted while `/readyz` already
    /// answers 503, so that a load balancer stops sending before the server stops listening
    /// (ms; SIGINT, an operator's Ctrl-C, skips it).
    pub drain_grace_ms: u64,
    /// Longest the requests in flight may take to finish once the server stops listening
    /// (ms); past it they are cut and the server exits.
    pub drain_timeout_ms: u64,
    /// Load balancers and proxies whose `X-Forwarded-For` is believed (addresses or networks,
    /// e.g. `127.0.0.1` or `10.0.0.0/8`; env `TRUSTED_PROXIES`, comma-separated): a request
    /// from one of them is counted against the client address it forwards, for the login and
    /// sign-up limits. Empty (the default): the header is ignored, so a client cannot pick its
    /// own address.
    pub trusted_proxies: Vec<String>,
}

/// `[database]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Full URL; when set, the parts below are ignored.
    pub url: Option<String>,
    /// Host (`DB_HOST`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// User (`DB_USER`).
    pub user: String,
    /// Password (`DB_PASSWORD`).
    pub password: String,
    /// Database name (`ecommerce` by default).
    pub name: String,
    /// Maximum pooled connections.
    pub pool_size: usize,
    /// How long a request waits for a free connection before a 503.
    pub pool_timeout_ms: u64,
    /// Server-side statement timeout, so no query can hold a connection forever.
    pub statement_timeout_ms: u64,
    /// Streaming read replicas of the primary, as URLs (`DATABASE_REPLICA_URLS`,
    /// comma-separated): catalogue, search and analytics reads are spread over them and the
    /// primary. Empty: everything goes to the primary.
    pub replicas: Vec<String>,
    /// A replica further behind the primary than this (ms) takes no reads until it catches up.
    pub max_replica_lag_ms: u64,
    /// The primary's weight for reads beside one replica: its cost is divided by it, so 1 treats
    /// it as one more replica, 0.5 (the default, as the primary also carries every write) sends
    /// it a read only when it answers more than twice as fast, and 0 keeps reads off it while a
    /// replica can take them.
    pub primary_read_weight: f64,
    /// Longest ban of a failing replica (ms); the first lasts 1 s, and each failure in a row
    /// doubles it up to this.
    pub replica_ban_max_ms: u64,
    /// How often each replica's replay position (and so its lag and health) is probed (ms).
    pub replica_probe_ms: u64,
    /// How a read's target is chosen: `adaptive` (the power of two choices on latency and
    /// load) or `round-robin` (each in turn: the baseline to compare with).
    pub read_balance: optimizer::balance::Strategy,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Admin bearer token (at least 16 characters). Unset: admin endpoints answer 401.
    pub admin_token: Option<String>,
    /// Lifetime of a login token in hours.
    pub token_ttl_hours: u32,
    /// Login attempts allowed per e-mail address per minute.
    pub login_attempts_per_minute: u32,
    /// Login and registration attempts allowed per client IP per minute.
    pub login_attempts_per_ip_per_minute: u32,
    /// Failed logins allowed per account (e-mail address, known or not) per hour, counted in
    /// the database across every instance; beyond it the account's logins answer 429 until
    /// the hour that began with its first failure is over.
    pub failed_logins_per_account_per_hour: u32,
    /// Failed logins allowed per client address per hour, whichever accounts they tried
    /// (credential stuffing); counted in the database like the per-account limit.
    pub failed_logins_per_client_per_hour: u32,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Largest page size for lists.
    pub max_page_size: u32,
    /// Deepest reachable result (page × limit), as search engines cap it.
    pub max_result_window: u32,
    /// Longest search query in characters.
    pub max_query_chars: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 3000,
            request_timeout_ms: 30_000,
            drain_grace_ms: 5_000,
            drain_timeout_ms: 30_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            host: "localhost".into(),
            port: 5432,
            user: "postgres".into(),
            password: "postgres".into(),
            name: "ecommerce".into(),
            pool_size: 32,
            pool_timeout_ms: 5_000,
            statement_timeout_ms: 15_000,
            replicas: Vec::new(),
            max_replica_lag_ms: 1_000,
            primary_read_weight: 0.5,
            replica_ban_max_ms: 5_000,
            replica_probe_ms: 200,
            read_balance: optimizer::balance::Strategy::Adaptive,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            token_ttl_hours: 24 * 30,
            login_attempts_per_minute: 10,
            login_attempts_per_ip_per_minute: 600,
            failed_logins_per_account_per_hour: 100,
            failed_logins_per_client_per_hour: 300,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            max_page_size: 100,
            max_result_window: 10_000,
            max_query_chars: 200,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        // The optimizer's knobs have their defaults in the optimizer crate.
        let optimizer = optimizer::Config::default();
        Self {
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            training_interval: optimizer.training_interval,
            prediction_threshold: optimizer.prediction_threshold,
            optimization: optimizer.optimization,
            features: optimizer.features,
            metrics: optimizer.metrics,
            telemetry: optimizer.telemetry,
            models: optimizer.models,
        }
    }
}

impl Config {
    /// Reads the TOML file (if any), then applies the overrides, then checks the result.
    ///
    /// # Errors
    /// An unreadable or invalid file, or values that make no sense together.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Self> {
        let mut config = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => match std::fs::read_to_string("shop.toml") {
                Ok(text) => toml::from_str(&text).context("parsing shop.toml")?,
                Err(_) => Config::default(),
            },
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        set(&mut self.server.host, &o.host);
        /// A comma-separated list from the environment: its entries trimmed, empty ones dropped.
        fn set_list(slot: &mut Vec<String>, value: &Option<Vec<String>>) {
            if let Some(entries) = value {
                *slot = entries
                    .iter()
                    .map(|e| e.trim())
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
        }
        set(&mut self.server.port, &o.port);
        set_list(&mut self.server.trusted_proxies, &o.trusted_proxies);
        if o.database_url.is_some() {
            self.database.url.clone_from(&o.database_url);
        }
        set(&mut self.database.host, &o.db_host);
        set(&mut self.database.port, &o.db_port);
        set(&mut self.database.user, &o.db_user);
        set(&mut self.database.password, &o.db_password);
        set(&mut self.database.name, &o.db_name);
        set(&mut self.database.pool_size, &o.db_pool_size);
        set_list(&mut self.database.replicas, &o.database_replica_urls);
        if o.admin_token.is_some() {
            self.auth.admin_token.clone_from(&o.admin_token);
        }
        let opt = &mut self.optimization;
        set(&mut opt.slow_query_p95_ms, &o.slow_query_p95_ms);
        set(&mut opt.slow_query_min_calls, &o.slow_query_min_calls);
        set(&mut opt.advisor_interval_secs, &o.advisor_interval_secs);
        set(&mut opt.auto_index, &o.auto_index);
        set(&mut self.models.dir, &o.models_dir);
        set(&mut self.models.max_age_hours, &o.model_max_age_hours);
        set(&mut self.training_interval, &o.training_interval);
        set(&mut self.telemetry.log_dir, &o.log_dir);
        if o.instance_id.is_some() {
            self.telemetry.instance_id.clone_from(&o.instance_id);
        }
    }

    /// Rejects settings that would make the server unsafe or useless.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(token) = &self.auth.admin_token
            && token.len() < 16
        {
            bail!("auth.admin_token (ADMIN_TOKEN) must be at least 16 characters");
        }
        if !(0.0..=1.0).contains(&self.prediction_threshold) {
            bail!("prediction_threshold must be between 0 and 1");
        }
        let o = &self.optimization;
        if o.min_concurrency == 0 || o.min_concurrency > o.max_concurrency {
            bail!("optimization.min_concurrency must be at least 1 and at most max_concurrency");
        }
        if o.target_latency_ms == 0 || o.max_memory_mb == 0 {
            bail!("optimization.target_latency_ms and max_memory_mb must be positive");
        }
        if !(0.0..=1.0).contains(&o.anomaly_rate_threshold) {
            bail!("optimization.anomaly_rate_threshold must be between 0 and 1");
        }
        if !o.slow_query_p95_ms.is_finite() || o.slow_query_p95_ms < 0.0 {
            bail!("optimization.slow_query_p95_ms must be a non-negative number");
        }
        if o.slow_query_min_calls == 0 {
            bail!("optimization.slow_query_min_calls must be at least 1");
        }
        if !(0.0..1.0).contains(&o.index_min_cost_reduction) {
            bail!("optimization.index_min_cost_reduction must be at least 0 and below 1");
        }
        if !o.auto_index_min_speedup.is_finite() || o.auto_index_min_speedup < 1.0 {
            bail!("optimization.auto_index_min_speedup must be at least 1");
        }
        if self.metrics.retention_hours == 0 {
            bail!("metrics.retention_hours must be at least 1");
        }
        let m = &self.models;
        if !m.max_age_hours.is_finite() || m.max_age_hours < 0.0 {
            bail!("models.max_age_hours must be a non-negative number");
        }
        if !m.drift_factor.is_finite() || (m.drift_factor != 0.0 && m.drift_factor < 1.0) {
            bail!("models.drift_factor must be 0 (off) or at least 1");
        }
        if !m.drift_min_secs.is_finite() || m.drift_min_secs < 0.0 {
            bail!("models.drift_min_secs must be a non-negative number of seconds");
        }
        if m.reload_interval_ms == 0 || m.training_timeout_secs == 0 {
            bail!("models.reload_interval_ms and models.training_timeout_secs must be positive");
        }
        if self.telemetry.channel_capacity == 0 {
            bail!("telemetry.channel_capacity must be positive");
        }
        if self.database.pool_size == 0 {
            bail!("database.pool_size must be at least 1");
        }
        self.trusted_proxies()?;
        let db = &self.database;
        if !db.primary_read_weight.is_finite() || db.primary_read_weight < 0.0 {
            bail!("database.primary_read_weight must be a non-negative number");
        }
        if db.replica_probe_ms == 0 || db.replica_ban_max_ms < 1_000 {
            bail!(
                "database.replica_probe_ms must be positive and replica_ban_max_ms at least 1000"
            );
        }
        if db.replicas.len() > 15 {
            bail!("database.replicas: at most 15");
        }
        for (i, _) in db.replicas.iter().enumerate() {
            self.replica_pg_config(i)?;
        }
        if self.limits.max_page_size == 0 || self.limits.max_result_window == 0 {
            bail!("limits.max_page_size and limits.max_result_window must be positive");
        }
        if self.auth.login_attempts_per_minute == 0
            || self.auth.login_attempts_per_ip_per_minute == 0
            || self.auth.failed_logins_per_account_per_hour == 0
            || self.auth.failed_logins_per_client_per_hour == 0
        {
            bail!("auth login attempt limits must be positive");
        }
        Ok(())
    }

    /// What the optimizer is configured with.
    pub fn optimizer(&self) -> optimizer::Config {
        optimizer::Config {
            training_interval: self.training_interval,
            prediction_threshold: self.prediction_threshold,
            optimization: self.optimization.clone(),
            features: self.features.clone(),
            metrics: self.metrics.clone(),
            telemetry: self.telemetry.clone(),
            models: self.models.clone(),
            db_pool_size: self.database.pool_size,
            pg: self.pg_config().ok(),
            balance: optimizer::balance::BalanceConfig {
                replicas: (0..self.database.replicas.len())
                    .map(|i| self.replica_label(i))
                    .collect(),
                max_lag: Duration::from_millis(self.database.max_replica_lag_ms),
                primary_weight: self.database.primary_read_weight,
                max_ban: Duration::from_millis(self.database.replica_ban_max_ms),
                strategy: self.database.read_balance,
            },
        }
    }

    /// The PostgreSQL connection settings this configuration names.
    ///
    /// # Errors
    /// A malformed `DATABASE_URL`.
    pub fn pg_config(&self) -> anyhow::Result<tokio_postgres::Config> {
        let db = &self.database;
        let pg = match &db.url {
            Some(url) => url
                .parse::<tokio_postgres::Config>()
                .context("parsing DATABASE_URL")?,
            None => {
                let mut pg = tokio_postgres::Config::new();
                pg.host(&db.host)
                    .port(db.port)
                    .user(&db.user)
                    .password(&db.password)
                    .dbname(&db.name);
                pg
            }
        };
        Ok(self.session(pg))
    }

    /// The settings every session of the server has, on the primary or a replica.
    fn session(&self, mut pg: tokio_postgres::Config) -> tokio_postgres::Config {
        pg.application_name("shop-api");
        pg.connect_timeout(Duration::from_secs(5));
        pg.options(format!(
            "-c statement_timeout={}",
            self.database.statement_timeout_ms
        ));
        pg
    }

    /// `server.trusted_proxies` as networks (an address alone is a network of one).
    ///
    /// # Errors
    /// An entry that is neither an address nor a network.
    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.server
            .trusted_proxies
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "server.trusted_proxies: {entry:?} is not an address or a network like 10.0.0.0/8"
                        )
                    })
            })
            .collect()
    }

    /// The connection settings of read replica `index` (0-based).
    ///
    /// # Errors
    /// A malformed URL (the message does not repeat it: it may hold a password).
    pub fn replica_pg_config(&self, index: usize) -> anyhow::Result<tokio_postgres::Config> {
        let url = &self.database.replicas[index];
        let pg = url.parse::<tokio_postgres::Config>().map_err(|e| {
            anyhow::anyhow!("database.replicas[{index}] is not a PostgreSQL URL: {e}")
        })?;
        // Session settings (the statement timeout, a 2 s connect timeout: a replica that does not
        // answer is skipped, not waited for).
        let mut pg = self.session(pg);
        pg.connect_timeout(Duration::from_secs(2));
        Ok(pg)
    }

    /// How replica `index` is named in metrics: its host and port, never its password.
    pub fn replica_label(&self, index: usize) -> String {
        match self.replica_pg_config(index) {
            Ok(pg) => {
                let host = pg
                    .get_hosts()
                    .first()
                    .map_or_else(String::new, |h| match h {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    });
                let port = pg.get_ports().first().copied().unwrap_or(5432);
                format!("{host}:{port}")
            }
            Err(_) => format!("replica-{}", index + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env_override_defaults() {
        let overrides = Overrides {
            port: Some(8080),
            db_host: Some("db.internal".into()),
            admin_token: Some("0123456789abcdef".into()),
            ..Overrides::default()
        };
        let mut config = Config::default();
        config.apply(&overrides);
        assert_eq!(config.server.port, 8080);
        assert_eq!(config.database.host, "db.internal");
        assert_eq!(config.database.user, "postgres");
        assert!(config.validate().is_ok());
    }

    #[test]
    fn index_building_is_off_unless_asked_for() {
        let mut config = Config::default();
        assert!(!config.optimization.auto_index);
        config.apply(&Overrides {
            auto_index: Some(true),
            slow_query_p95_ms: Some(50.0),
            ..Overrides::default()
        });
        assert!(config.optimization.auto_index);
        assert!((config.optimization.slow_query_p95_ms - 50.0).abs() < f64::EPSILON);
        let from_toml: Config =
            toml::from_str("[optimization]\nauto_index = true\n").expect("valid toml");
        assert!(from_toml.optimization.auto_index);
    }

    #[test]
    fn short_admin_token_is_refused() {
        let mut config = Config::default();
        config.auth.admin_token = Some("short".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn toml_unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[server]\nprot = 1\n").is_err());
        let config: Config = toml::from_str("[database]\npool_size = 8\n").expect("valid toml");
        assert_eq!(config.database.pool_size, 8);
    }
}

#[cfg(test)]
mod documented {
    //! `docs/configuration.md` must list every configuration key with its real default.

    use super::Config;
    use std::collections::BTreeMap;

    /// The rows of the table headed `| TOML key | Env / flag | Default | Meaning |`: each key
    /// and its default (`None` for "unset").
    fn documented() -> Vec<(String, Option<toml::Value>)> {
        let doc = include_str!("../../docs/configuration.md");
        let rows = doc
            .lines()
            .skip_while(|line| !line.starts_with("| TOML key |"))
            .skip(2)
            .take_while(|line| line.starts_with('|'));
        rows.map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let key = cells[1].trim_matches('`').to_owned();
            let default = (!cells[3].starts_with("unset")).then(|| {
                let value = cells[3].split('`').nth(1).expect("a default in backticks");
                let parsed: toml::Table = toml::from_str(&format!("v = {value}"))
                    .unwrap_or_else(|e| panic!("`{key}`: default {value} is not TOML: {e}"));
                parsed["v"].clone()
            });
            (key, default)
        })
        .collect()
    }

    /// Every leaf of a TOML value, by its dotted key.
    fn leaves(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match value {
            toml::Value::Table(table) => {
                for (name, inner) in table {
                    leaves(&format!("{prefix}{name}."), inner, out);
                }
            }
            leaf => {
                out.insert(prefix.trim_end_matches('.').to_owned(), leaf.clone());
            }
        }
    }

    /// Whether `Config` has this key: it refuses unknown keys, so a known one can only fail
    /// for another reason (its type).
    fn config_has(key: &str) -> bool {
        let text = match key.rsplit_once('.') {
            Some((table, name)) => format!("[{table}]\n{name} = \"x\""),
            None => format!("{key} = \"x\""),
        };
        match toml::from_str::<Config>(&text) {
            Ok(_) => true,
            Err(e) => !e.message().contains("unknown field"),
        }
    }

    #[test]
    fn every_key_is_documented_with_its_default() {
        let mut real = BTreeMap::new();
        let defaults = toml::Value::try_from(Config::default()).expect("Config serializes");
        leaves("", &defaults, &mut real);
        let doc = documented();
        let by_key: BTreeMap<_, _> = doc.iter().cloned().collect();
        assert_eq!(by_key.len(), doc.len(), "a key is documented twice");

        for (key, value) in &real {
            assert_eq!(
                by_key.get(key),
                Some(&Some(value.clone())),
                "docs/configuration.md must document `{key}` with default `{value}`"
            );
        }
        for (key, default) in &doc {
            assert!(
                config_has(key),
                "`{key}` is documented, but Config has no such key"
            );
            assert_eq!(
                default.is_some(),
                real.contains_key(key),
                "`{key}`: documented as unset but has a default, or the reverse"
            );
        }
    }
}
