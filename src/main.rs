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
use switchyard::config::subscriptions::{self, Subscription};
use switchyard::config::ConfigErrors;
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
    /// Validate the config and the subscription files; print every error, exit 1 if any.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run every subscription's filter on one event, offline, and say what matched.
    Explain {
        /// A structured-mode JSON event, or a request in the shape of the Tekton test
        /// corpus (`{"headers": {...}, "body": ...}`).
        #[arg(long)]
        event: PathBuf,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    match cli.command {
        Command::Check { config } => match load_all(config.as_deref(), &env) {
            Ok((c, subs)) => {
                let file = c.file.map_or_else(
                    || "embedded defaults".to_string(),
                    |p| p.display().to_string(),
                );
                println!("{file}: ok, {} subscription(s)", subs.len());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s)", errors.0.len());
                ExitCode::FAILURE
            }
        },
        Command::Explain { event, config } => explain(&event, config.as_deref(), &env),
        Command::Serve { config } => {
            init_tracing(&env);
            let (config, subscriptions) = match load_all(config.as_deref(), &env) {
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
            match serve(config, subscriptions) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The server config and the subscriptions it names, every error of both.
fn load_all(
    flag: Option<&std::path::Path>,
    env: &BTreeMap<String, String>,
) -> Result<(config::Config, Vec<Subscription>), ConfigErrors> {
    let config = config::load(flag, env)?;
    let subs = subscriptions::load(&config)?;
    Ok((config, subs))
}

fn explain(
    event: &std::path::Path,
    flag: Option<&std::path::Path>,
    env: &BTreeMap<String, String>,
) -> ExitCode {
    let (_, subs) = match load_all(flag, env) {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let event = match std::fs::read(event)
        .map_err(|e| e.to_string())
        .and_then(|b| switchyard::event::from_file(&b))
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{}: {e}", event.display());
            return ExitCode::FAILURE;
        }
    };
    if subs.is_empty() {
        println!("no subscriptions are configured");
    }
    for verdict in switchyard::router::explain::explain(&subs, &event) {
        println!("{verdict}");
    }
    ExitCode::SUCCESS
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
async fn serve(config: config::Config, subscriptions: Vec<Subscription>) -> anyhow::Result<()> {
    match &config.file {
        Some(f) => tracing::info!(file = %f.display(), "config loaded"),
        None => tracing::info!("no config file; running on the embedded defaults"),
    }
    let signal = shutdown_signal();
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
    let server = Server::start(config, subscriptions, ingress, admin, Arc::new(SystemClock))
        .await
        .context("cannot open the log")?;
    let stop = server.shutdown_token();
    #[cfg(unix)]
    {
        let reloader = server.reloader.clone();
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading subscriptions");
                    reloader.trigger();
                }
            });
        }
    }
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    server.wait().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, so
/// call it before anything a signal should stop has started.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut t), Some(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {},
                        _ = i.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
