//! The `switchyard` command: `serve`, `check`, `explain` and the client commands. Exit
//! codes: 0 success, 1 failure, 64 (EX_USAGE) for a config that does not validate, from
//! every command that reads one (`serve` reports it before any port is bound).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    /// Run every subscription's filter on one event, offline, and say what matched.
    Explain {
        /// A structured-mode JSON event, or a request in the shape of the Tekton test
        /// corpus (`{"headers": {...}, "body": ...}`).
        #[arg(long)]
        event: PathBuf,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Build one event and post it to the ingress in binary mode, as `kn event send` does.
    Send {
        /// The ingress URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/")]
        to: String,
        #[arg(long = "type")]
        ty: String,
        #[arg(long)]
        source: String,
        /// Default: a fresh id.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        /// The data: a string, or @FILE.
        #[arg(long)]
        data: Option<String>,
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// An extension attribute, NAME=VALUE; repeat for more.
        #[arg(short = 'e', long = "extension")]
        extensions: Vec<String>,
        /// A bearer token for `ingress.tokens`.
        #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How to print the result: `accepted ID`, or the event's id, source and type in
        /// JSON.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: cli::Output,
    },
    /// List stored events (the admin API).
    Events {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long, default_value = "default")]
        broker: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep printing new events as they arrive.
        #[arg(long)]
        follow: bool,
    },
    /// Re-route a range of the log through a subscription into its lanes (the admin API).
    Replay {
        #[command(flatten)]
        admin: AdminArgs,
        /// The subscription.
        name: String,
        /// A sequence number or an RFC 3339 arrival time.
        #[arg(long)]
        from: String,
        /// Inclusive as a sequence, exclusive as a time; default: the newest event.
        #[arg(long)]
        to: Option<String>,
        /// Only this sink's lane.
        #[arg(long)]
        sink: Option<String>,
    },
    /// The dead-letter store (the admin API).
    Deadletters {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: Option<DeadLetterAction>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The admin listener's URL.
    #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
    admin: String,
    /// The admin token (`admin.token`): with one set, every API call needs it, reads
    /// included.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    token: Option<String>,
    /// How to print results.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    output: cli::Output,
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// List dead letters (the default).
    List {
        #[arg(long)]
        subscription: Option<String>,
        #[arg(long)]
        sink: Option<String>,
    },
    /// Put a dead letter's event back into its lane.
    Redeliver { id: u64 },
    /// Remove a dead letter.
    Delete { id: u64 },
}

/// Runs one client command and prints its result; exit 1 when it failed.
#[tokio::main(flavor = "current_thread")]
async fn client(command: Command) -> ExitCode {
    match run_client(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print(
    output: cli::Output,
    value: &serde_json::Value,
    table: impl FnOnce(&serde_json::Value) -> String,
) {
    match output {
        cli::Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        cli::Output::Table => println!("{}", table(value)),
    }
}

async fn run_client(command: Command) -> Result<(), cli::CliError> {
    use http::Method;
    match command {
        Command::Send {
            to,
            ty,
            source,
            id,
            subject,
            data,
            content_type,
            extensions,
            token,
            output,
        } => {
            let enc = |s: &str| switchyard::event::binary::percent_encode(s).into_owned();
            let id = id.unwrap_or_else(cli::new_id);
            let mut headers = vec![
                ("ce-specversion".to_string(), "1.0".to_string()),
                ("ce-id".to_string(), enc(&id)),
                ("ce-source".to_string(), enc(&source)),
                ("ce-type".to_string(), enc(&ty)),
            ];
            if let Some(s) = subject {
                headers.push(("ce-subject".into(), enc(&s)));
            }
            for e in extensions {
                let (k, v) = e.split_once('=').ok_or_else(|| {
                    cli::CliError::Usage(format!("--extension takes NAME=VALUE, not '{e}'"))
                })?;
                // Header names lose their case on the wire: check the name here.
                switchyard::event::validate::check_name(k)
                    .map_err(|e| cli::CliError::Usage(format!("--extension {k}: {}", e.detail)))?;
                headers.push((format!("ce-{k}"), enc(v)));
            }
            let body =
                match data {
                    None => None,
                    Some(d) => Some(match d.strip_prefix('@') {
                        Some(path) => bytes::Bytes::from(std::fs::read(path).map_err(|e| {
                            cli::CliError::Usage(format!("cannot read {path}: {e}"))
                        })?),
                        None => bytes::Bytes::from(d),
                    }),
                };
            let body = body.map(|b| (content_type.as_str(), b));
            cli::call(Method::POST, &to, token.as_deref(), body, &headers).await?;
            // The id is printed whether it was given or made up, to find the event by.
            let sent = serde_json::json!({ "id": id, "source": source, "type": ty });
            print(output, &sent, |s| {
                format!("accepted {}", cli::cell(&s["id"]))
            });
            Ok(())
        }
        Command::Events {
            admin,
            broker,
            after,
            limit,
            follow,
        } => {
            let mut after = after;
            let mut header = true;
            loop {
                let url = format!(
                    "{}/api/v1/brokers/{broker}/events?after={after}&limit={limit}",
                    admin.admin.trim_end_matches('/')
                );
                let events =
                    cli::call(Method::GET, &url, admin.token.as_deref(), None, &[]).await?;
                let list = events.as_array().cloned().unwrap_or_default();
                if !follow {
                    print(admin.output, &events, cli::events_table);
                    return Ok(());
                }
                // Following: the table's header once, then its rows as they come; in JSON
                // one event per line (JSON Lines), for a pipe to read as they come.
                for line in cli::follow_lines(admin.output, &list, header) {
                    println!("{line}");
                }
                header &= list.is_empty();
                if let Some(last) = list.last().and_then(|e| e["seq"].as_u64()) {
                    after = last;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Command::Replay {
            admin,
            name,
            from,
            to,
            sink,
        } => {
            let position = |p: &str| {
                p.parse::<u64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| serde_json::Value::from(p))
            };
            let mut body = serde_json::json!({ "from": position(&from) });
            if let Some(t) = to {
                body["to"] = position(&t);
            }
            if let Some(s) = sink {
                body["sink"] = s.into();
            }
            let url = format!(
                "{}/api/v1/subscriptions/{name}/replay",
                admin.admin.trim_end_matches('/')
            );
            let answer = cli::call(
                Method::POST,
                &url,
                admin.token.as_deref(),
                Some(("application/json", bytes::Bytes::from(body.to_string()))),
                &[],
            )
            .await?;
            print(admin.output, &answer, |a| {
                format!(
                    "{} event(s) queued ({}..={})",
                    a["queued"], a["from"], a["to"]
                )
            });
            Ok(())
        }
        Command::Deadletters { admin, action } => {
            let base = admin.admin.trim_end_matches('/').to_string();
            match action.unwrap_or(DeadLetterAction::List {
                subscription: None,
                sink: None,
            }) {
                DeadLetterAction::List { subscription, sink } => {
                    let mut query = Vec::new();
                    if let Some(s) = subscription {
                        query.push(format!("subscription={s}"));
                    }
                    if let Some(s) = sink {
                        query.push(format!("sink={s}"));
                    }
                    let url = format!("{base}/api/v1/deadletters?{}", query.join("&"));
                    let letters =
                        cli::call(Method::GET, &url, admin.token.as_deref(), None, &[]).await?;
                    print(admin.output, &letters, cli::dead_letters_table);
                }
                DeadLetterAction::Redeliver { id } => {
                    let url = format!("{base}/api/v1/deadletters/{id}/redeliver");
                    let answer =
                        cli::call(Method::POST, &url, admin.token.as_deref(), None, &[]).await?;
                    print(admin.output, &answer, |_| {
                        format!("dead letter {id} requeued")
                    });
                }
                DeadLetterAction::Delete { id } => {
                    let url = format!("{base}/api/v1/deadletters/{id}");
                    cli::call(Method::DELETE, &url, admin.token.as_deref(), None, &[]).await?;
                    print(admin.output, &serde_json::json!({ "deleted": id }), |_| {
                        format!("dead letter {id} deleted")
                    });
                }
            }
            Ok(())
        }
        _ => Err(cli::CliError::Usage("not a client command".into())),
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
        Command::Explain { event, config } => explain(&event, config.as_deref(), &env),
        command @ (Command::Send { .. }
        | Command::Events { .. }
        | Command::Replay { .. }
        | Command::Deadletters { .. }) => client(command),
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
