//! The `switchyard` command: `serve`, `check`, `explain`, the client commands and
//! `completions`. Exit codes: 0 success, 1 failure, 64 (EX_USAGE) for a config that does
//! not validate, from every command that reads one (`serve` reports it before any port
//! is bound).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};

use switchyard::cli;
use switchyard::clock::SystemClock;
use switchyard::config;
use switchyard::config::subscriptions::{self, Subscription};
use switchyard::config::ConfigErrors;
use switchyard::server::Server;

/// The broker allocates and frees per event on every thread (decoded events, records,
/// HTTP buffers); mimalloc's per-thread pages do that with less time in the allocator
/// than glibc's arenas, and return freed memory that glibc's arenas keep.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Log lines for people (`text`) or for machines (`json`, one object per line).
        #[arg(
            long,
            value_enum,
            default_value = "text",
            env = "SWITCHYARD_LOG_FORMAT"
        )]
        log_format: LogFormat,
    },
    /// Validate the config and the subscription files; print every error, exit 64 if any
    /// (as serve and explain do on a config that does not validate).
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run every subscription's filter on one event and say what matched: the config's
    /// subscriptions, or with `--admin` the running broker's.
    Explain {
        /// A structured-mode JSON event, or a request in the shape of the Tekton test
        /// corpus (`{"headers": {...}, "body": ...}`); `-` reads it from stdin.
        #[arg(long)]
        event: PathBuf,
        #[arg(short, long, conflicts_with = "admin")]
        config: Option<PathBuf>,
        /// Explain against the subscriptions of the broker whose admin listener this is.
        #[arg(long)]
        admin: Option<String>,
        /// The admin token, with `--admin`.
        #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How to print the verdicts: as text, or in the admin API's shape.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: cli::Output,
    },
    #[command(flatten)]
    Client(cli::commands::Client),
    /// Print a shell's completion script.
    ///
    /// `switchyard completions bash > /etc/bash_completion.d/switchyard`; for zsh, into a
    /// folder of `$fpath` as `_switchyard`; for fish, into
    /// `~/.config/fish/completions/switchyard.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Runs one client command and prints its result; exit 1 when it failed.
#[tokio::main(flavor = "current_thread")]
async fn client(command: impl std::future::Future<Output = Result<(), cli::CliError>>) -> ExitCode {
    match command.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command that prints ends quietly when its reader goes away (`| head -1`), as Unix
/// tools do, instead of panicking on the broken pipe. `serve` keeps Rust's default
/// (SIGPIPE ignored): a peer that closes its socket must not end the broker.
fn end_quietly_on_a_closed_stdout() {
    // SAFETY: signal(2) with a valid signal number and the default disposition, before
    // any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        end_quietly_on_a_closed_stdout();
    }
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
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Explain {
            event,
            config,
            admin: None,
            output,
            ..
        } => explain(&event, config.as_deref(), output, &env),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "switchyard",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Explain {
            event,
            admin: Some(admin),
            token,
            output,
            ..
        } => client(async move {
            cli::commands::explain_remote(&event, &admin, token.as_deref(), output).await
        }),
        Command::Client(command) => client(cli::commands::run(command)),
        Command::Serve { config, log_format } => {
            init_tracing(&env, log_format);
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

/// The server config and the subscriptions it names, every error of both: the
/// subscription files are read even when keys of the config are at fault (those keep
/// their defaults), so one run shows everything to fix.
fn load_all(
    flag: Option<&std::path::Path>,
    env: &BTreeMap<String, String>,
) -> Result<(config::Config, Vec<Subscription>), ConfigErrors> {
    let (config, mut errors) = config::load_partial(flag, env);
    let Some(config) = config else {
        return Err(ConfigErrors(errors));
    };
    match subscriptions::load(&config) {
        Ok(subs) if errors.is_empty() => Ok((config, subs)),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}

fn explain(
    event: &std::path::Path,
    flag: Option<&std::path::Path>,
    output: cli::Output,
    env: &BTreeMap<String, String>,
) -> ExitCode {
    let (_, subs) = match load_all(flag, env) {
        Ok(v) => v,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let event = match cli::commands::read_event(event) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    // In the order the running broker lists them: by broker, then as in the files.
    let mut subs = subs;
    subs.sort_by(|a, b| a.broker.cmp(&b.broker));
    let verdicts = switchyard::delivery::explain(&subs, &event);
    cli::commands::print(output, &cli::verdicts_json(&verdicts), |_| {
        cli::explain_text(&verdicts)
    });
    ExitCode::SUCCESS
}

fn init_tracing(env: &BTreeMap<String, String>, format: LogFormat) {
    let filter = env
        .get("SWITCHYARD_LOG")
        .or_else(|| env.get("RUST_LOG"))
        .cloned()
        .unwrap_or_else(|| "info".to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match format {
        // A lane's lines carry its span: {"span": {"name": "lane", "broker", "subscription", "sink"}}.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Raises the soft limit on open files to the hard limit: every ingress connection,
/// every pooled sink connection and the log's files take one (docs/operations.md says
/// how many the broker needs).
fn raise_open_file_limit() {
    // SAFETY: getrlimit and setrlimit with a valid resource and a struct they fill or read.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let soft = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::info!(from = soft, to = lim.rlim_max, "open-file limit raised");
            }
        }
    }
}

/// Runs the broker on a multi-threaded runtime whose threads have the stack CEL
/// evaluation is sized for (filters and dedupe keys run on them).
fn serve(config: config::Config, subscriptions: Vec<Subscription>) -> anyhow::Result<()> {
    raise_open_file_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(switchyard::expr::cost::EVAL_STACK)
        .build()
        .context("cannot start the runtime")?
        .block_on(serve_on(config, subscriptions))
}

async fn serve_on(config: config::Config, subscriptions: Vec<Subscription>) -> anyhow::Result<()> {
    match &config.file {
        Some(f) => tracing::info!(file = %f.display(), "config loaded"),
        None => tracing::info!("no config file; running on the embedded defaults"),
    }
    for (key, variable) in &config.from_env {
        tracing::info!(%key, %variable, "set by the environment, over the config file");
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
