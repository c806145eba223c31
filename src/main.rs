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
    /// Build one event and post it to the ingress, in binary mode (as `kn event send`
    /// does) or structured.
    Send {
        /// The ingress URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/")]
        to: String,
        #[arg(long = "type", value_name = "TYPE")]
        ty: String,
        #[arg(long)]
        source: String,
        /// Default: a fresh id.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        /// The event's time: RFC 3339, or `now`.
        #[arg(long)]
        time: Option<String>,
        /// The URI of the data's schema.
        #[arg(long)]
        dataschema: Option<String>,
        /// The data: a string, or @FILE.
        #[arg(long)]
        data: Option<String>,
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// An extension attribute, NAME=VALUE; repeat for more.
        #[arg(short = 'e', long = "extension")]
        extensions: Vec<String>,
        /// Post one `application/cloudevents+json` request instead of binary mode.
        #[arg(long)]
        structured: bool,
        /// A bearer token for `ingress.tokens`.
        #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How to print the result: `accepted ID`, or the event's id, source and type in
        /// JSON.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: cli::Output,
    },
    /// Subscriptions and their lanes: lag, in flight, parked, delivered, dead-lettered,
    /// the last error (the admin API).
    Subscriptions {
        #[command(flatten)]
        admin: AdminArgs,
        /// One subscription, with its filter and how many events it matched.
        name: Option<String>,
    },
    /// List stored events, or show one (the admin API).
    Events {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        action: Option<EventsAction>,
        /// The broker whose log to read.
        #[arg(long, default_value = "default", global = true)]
        broker: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events that pass the filters (without `--follow`).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only events of this type; a prefix when it ends in `*`.
        #[arg(long = "type", value_name = "TYPE")]
        ty: Option<String>,
        /// Only events from this source; a prefix when it ends in `*`.
        #[arg(long)]
        source: Option<String>,
        /// Only events that arrived at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
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

#[derive(Subcommand)]
enum EventsAction {
    /// One stored event: its attributes and its data.
    Get {
        /// The event's sequence number.
        seq: u64,
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
    println!("{}", cli::render(output, value, table));
}

/// The admin API's largest page of events (`limit` above it is cut to it, see
/// src/admin/api.rs).
const API_MAX_PAGE: usize = 1000;

/// The smallest page a filtered listing asks for: a filter that passes few events would
/// otherwise page through the log a few records per request.
const FILTERED_PAGE: usize = 100;

/// One page of a broker's stored events after `after`; empty at the log's head.
async fn events_page(
    admin: &AdminArgs,
    broker: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<serde_json::Value>, cli::CliError> {
    let url = format!(
        "{}/api/v1/brokers/{broker}/events?after={after}&limit={limit}",
        admin.admin.trim_end_matches('/')
    );
    let page = cli::call(http::Method::GET, &url, admin.token.as_deref(), None, &[]).await?;
    Ok(page.as_array().cloned().unwrap_or_default())
}

/// The sequence number of the last record of a page: where the next page starts. Taken
/// from the page, not from the records a filter kept, so that a page with no match still
/// moves the listing on.
fn last_seq(page: &[serde_json::Value]) -> Option<u64> {
    page.last().and_then(|r| r["seq"].as_u64())
}

/// Reads the event of `explain --event PATH` (`-`: stdin).
fn read_event(path: &std::path::Path) -> Result<switchyard::event::Event, String> {
    let bytes = if path.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .map(|_| b)
            .map_err(|e| format!("stdin: {e}"))?
    } else {
        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let name = if path.as_os_str() == "-" {
        "stdin".to_string()
    } else {
        path.display().to_string()
    };
    switchyard::event::from_file(&bytes).map_err(|e| format!("{name}: {e}"))
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
            time,
            dataschema,
            data,
            content_type,
            extensions,
            structured,
            token,
            output,
        } => {
            let id = id.unwrap_or_else(cli::new_id);
            let mut attributes = vec![
                ("specversion".to_string(), "1.0".to_string()),
                ("id".to_string(), id.clone()),
                ("source".to_string(), source.clone()),
                ("type".to_string(), ty.clone()),
            ];
            for (name, value) in [
                ("subject", subject),
                ("time", time.as_deref().map(cli::event_time)),
                ("dataschema", dataschema),
            ] {
                if let Some(v) = value {
                    attributes.push((name.to_string(), v));
                }
            }
            for e in extensions {
                let (k, v) = e.split_once('=').ok_or_else(|| {
                    cli::CliError::Usage(format!("--extension takes NAME=VALUE, not '{e}'"))
                })?;
                // Header names lose their case on the wire: check the name here.
                switchyard::event::validate::check_name(k)
                    .map_err(|e| cli::CliError::Usage(format!("--extension {k}: {}", e.detail)))?;
                attributes.push((k.to_string(), v.to_string()));
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
            if structured {
                // The JSON format's own encoder: data as JSON for a JSON type (when it
                // parses), as a string for text, as data_base64 otherwise.
                use switchyard::event::{validate::coerce_known, AttrValue, Data, Event};
                let mut attrs: Vec<(String, AttrValue)> = attributes
                    .into_iter()
                    .map(|(k, v)| {
                        let value = coerce_known(&k, AttrValue::String(v));
                        (k, value)
                    })
                    .collect();
                if body.is_some() {
                    attrs.push((
                        "datacontenttype".into(),
                        AttrValue::String(content_type.clone()),
                    ));
                }
                let event = Event::new(attrs, body.map(Data::Binary))
                    .map_err(|e| cli::CliError::Usage(format!("the event is not valid: {e}")))?;
                let json = switchyard::event::json::encode_event(&event);
                let body = ("application/cloudevents+json", bytes::Bytes::from(json));
                cli::call(Method::POST, &to, token.as_deref(), Some(body), &[]).await?;
            } else {
                let enc = |s: &str| switchyard::event::binary::percent_encode(s).into_owned();
                let headers: Vec<(String, String)> = attributes
                    .iter()
                    .map(|(k, v)| (format!("ce-{k}"), enc(v)))
                    .collect();
                let body = body.map(|b| (content_type.as_str(), b));
                cli::call(Method::POST, &to, token.as_deref(), body, &headers).await?;
            }
            // The id is printed whether it was given or made up, to find the event by.
            let sent = serde_json::json!({ "id": id, "source": source, "type": ty });
            print(output, &sent, |s| {
                format!("accepted {}", cli::cell(&s["id"]))
            });
            Ok(())
        }
        Command::Subscriptions { admin, name } => {
            let base = admin.admin.trim_end_matches('/');
            let url = match &name {
                Some(n) => format!("{base}/api/v1/subscriptions/{n}"),
                None => format!("{base}/api/v1/subscriptions"),
            };
            let answer = cli::call(Method::GET, &url, admin.token.as_deref(), None, &[]).await?;
            match name {
                Some(_) => print(admin.output, &answer, cli::subscription_detail),
                None => print(admin.output, &answer, cli::subscriptions_table),
            }
            Ok(())
        }
        Command::Events {
            admin,
            action: Some(EventsAction::Get { seq }),
            broker,
            ty,
            source,
            since,
            follow,
            ..
        } => {
            // (clap's args_conflicts_with_subcommands would refuse `--admin` before `get`
            // too: the listing's own flags are refused here instead.)
            if ty.is_some() || source.is_some() || since.is_some() || follow {
                return Err(cli::CliError::Usage(
                    "events get SEQ takes no --type, --source, --since or --follow".into(),
                ));
            }
            let url = format!(
                "{}/api/v1/brokers/{broker}/events/{seq}",
                admin.admin.trim_end_matches('/')
            );
            let record = cli::call(Method::GET, &url, admin.token.as_deref(), None, &[]).await?;
            print(admin.output, &record, cli::event_detail);
            Ok(())
        }
        Command::Events {
            admin,
            action: None,
            broker,
            after,
            limit,
            ty,
            source,
            since,
            follow,
        } => {
            let filter = cli::EventFilter::new(ty.as_deref(), source.as_deref(), since.as_deref())?;
            let page_for = |wanted: usize| {
                if filter.is_empty() {
                    wanted.clamp(1, API_MAX_PAGE)
                } else {
                    wanted.clamp(FILTERED_PAGE, API_MAX_PAGE)
                }
            };
            let mut after = after;
            if !follow {
                let mut found = Vec::new();
                while found.len() < limit {
                    let page =
                        events_page(&admin, &broker, after, page_for(limit - found.len())).await?;
                    let Some(last) = last_seq(&page) else {
                        break;
                    };
                    after = last;
                    let room = limit - found.len();
                    found.extend(page.into_iter().filter(|r| filter.matches(r)).take(room));
                }
                print(
                    admin.output,
                    &serde_json::Value::Array(found),
                    cli::events_table,
                );
                return Ok(());
            }
            // Following: the table's header once, then its rows as they come; in JSON
            // one event per line (JSON Lines), for a pipe to read as they come.
            let mut header = true;
            loop {
                loop {
                    let page = events_page(&admin, &broker, after, page_for(limit)).await?;
                    let Some(last) = last_seq(&page) else {
                        break;
                    };
                    after = last;
                    let kept: Vec<serde_json::Value> =
                        page.into_iter().filter(|r| filter.matches(r)).collect();
                    for line in cli::follow_lines(admin.output, &kept, header) {
                        println!("{line}");
                    }
                    header &= kept.is_empty();
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        Command::Explain {
            event,
            admin: Some(admin),
            token,
            output,
            ..
        } => {
            let event = read_event(&event).map_err(cli::CliError::Usage)?;
            let body = bytes::Bytes::from(switchyard::event::json::encode_event(&event));
            let url = format!("{}/api/v1/explain", admin.trim_end_matches('/'));
            let answer = cli::call(
                Method::POST,
                &url,
                token.as_deref(),
                Some(("application/cloudevents+json", body)),
                &[],
            )
            .await?;
            if output == cli::Output::Table {
                let verdicts = cli::verdicts_from_json(&answer)?;
                println!("{}", cli::explain_text(&verdicts));
            } else {
                print(output, &answer, |_| String::new());
            }
            Ok(())
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
        command @ (Command::Send { .. }
        | Command::Subscriptions { .. }
        | Command::Events { .. }
        | Command::Explain { .. }
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
    let event = match read_event(event) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    // In the order the running broker lists them: by broker, then as in the files.
    let mut subs = subs;
    subs.sort_by(|a, b| a.broker.cmp(&b.broker));
    let verdicts = switchyard::router::explain::explain(&subs, &event);
    print(output, &cli::verdicts_json(&verdicts), |_| {
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
