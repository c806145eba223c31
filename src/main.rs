//! The `switchyard` command: `serve` and `check`. Exit codes: 0 success, 1 failure,
//! 64 (EX_USAGE) for a bad config, reported before any port is bound.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use switchyard::clock::SystemClock;
use switchyard::config;
use switchyard::server::Server;

/// Exit code for a config that does not validate: sysexits.h EX_USAGE ("the command
/// was used incorrectly"), so scripts can tell a bad config from a runtime failure.
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A standalone CloudEvents broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (embedded defaults when there is no config file).
    Serve {
        /// The server config file (default: $SWITCHYARD_CONFIG, else config/switchyard.yaml if present).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and print every error; exit 1 if there are any.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::Check { config } => match config::load(config.as_deref(), &env) {
            Ok(c) => {
                let file = c.file.map_or_else(
                    || "embedded defaults".to_string(),
                    |p| p.display().to_string(),
                );
                println!("{file}: ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s)", errors.0.len());
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            init_tracing(&env);
            let config = match config::load(config.as_deref(), &env) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "switchyard: the config is not valid ({} error(s)); nothing was started",
                        errors.0.len()
                    );
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_tracing(env: &BTreeMap<String, String>) {
    let filter = env
        .get("SWITCHYARD_LOG")
        .or_else(|| env.get("RUST_LOG"))
        .cloned()
        .unwrap_or_else(|| "info".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn serve(config: config::Config) -> anyhow::Result<()> {
    match &config.file {
        Some(f) => tracing::info!(file = %f.display(), "config loaded"),
        None => tracing::info!("no config file; running on the embedded defaults"),
    }
    let ingress = tokio::net::TcpListener::bind(config.ingress.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (ingress.listen)",
                config.ingress.listen
            )
        })?;
    let admin = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", config.admin.listen))?;
    let server = Server::start(config, ingress, admin, Arc::new(SystemClock))
        .await
        .context("cannot open the log")?;
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    server.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
