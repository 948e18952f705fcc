//! Thin binary over the `server` library: parse the command line, set up logging, run.

use clap::Parser;
use server::config::{Cli, Command, Config};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.overrides)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            if config.auth.admin_token.is_none() {
                tracing::warn!("no ADMIN_TOKEN set: admin endpoints answer 401");
            }
            server::Application::build(config)
                .await?
                .run_until_stopped()
                .await
        }
        Command::Migrate => server::migrate::run(&config).await,
        Command::Seed { products, rng_seed } => {
            server::migrate::run(&config).await?;
            let report = server::seed::run(&config, products, rng_seed).await?;
            println!("{report}");
            Ok(())
        }
    }
}
