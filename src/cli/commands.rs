//! The client commands, as the command line states them and as they run: each calls
//! the ingress or the admin API and prints the answer.

use std::path::Path;

use clap::Subcommand;

use super::{CliError, Output};
use crate::cli;

/// The commands that talk to a running broker.
#[derive(Subcommand)]
pub enum Client {
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
        #[command(subcommand)]
        action: Option<SubscriptionAction>,
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
}

#[derive(Subcommand)]
pub enum SubscriptionAction {
    /// Stop a subscription's lanes (or one's) from sending: events keep being routed into
    /// them and wait, durably, across restarts, until `resume`.
    Pause {
        name: String,
        /// Only this sink's lane.
        #[arg(long)]
        sink: Option<String>,
    },
    /// Let paused lanes send again.
    Resume {
        name: String,
        /// Only this sink's lane.
        #[arg(long)]
        sink: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum EventsAction {
    /// One stored event: its attributes and its data.
    Get {
        /// The event's sequence number.
        seq: u64,
    },
}

#[derive(clap::Args)]
pub struct AdminArgs {
    /// The admin listener's URL.
    #[arg(long, default_value = "http://127.0.0.1:9090", global = true)]
    pub admin: String,
    /// The admin token (`admin.token`): with one set, every API call needs it, reads
    /// included.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// How to print results.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: cli::Output,
}

#[derive(Subcommand)]
pub enum DeadLetterAction {
    /// List dead letters (the default).
    List {
        #[arg(long)]
        subscription: Option<String>,
        #[arg(long)]
        sink: Option<String>,
    },
    /// Put a dead letter's event back into its lane; with `--subscription` (and
    /// `--sink`) instead of an id, every dead letter of that subscription (or sink).
    Redeliver {
        id: Option<u64>,
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        subscription: Option<String>,
        #[arg(long, requires = "subscription")]
        sink: Option<String>,
    },
    /// Remove a dead letter.
    Delete { id: u64 },
}

pub fn print(
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
pub fn read_event(path: &std::path::Path) -> Result<crate::event::Event, String> {
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
    crate::event::from_file(&bytes).map_err(|e| format!("{name}: {e}"))
}

/// Runs one client command and prints its answer.
pub async fn run(command: Client) -> Result<(), CliError> {
    use http::Method;
    match command {
        Client::Send {
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
                crate::event::validate::check_name(k)
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
                use crate::event::{validate::coerce_known, AttrValue, Data, Event};
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
                let json = crate::event::json::encode_event(&event);
                let body = ("application/cloudevents+json", bytes::Bytes::from(json));
                cli::call(Method::POST, &to, token.as_deref(), Some(body), &[]).await?;
            } else {
                let enc = |s: &str| crate::event::binary::percent_encode(s).into_owned();
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
        Client::Subscriptions {
            admin,
            action: Some(action),
            name,
        } => {
            if name.is_some() {
                return Err(cli::CliError::Usage(
                    "subscriptions pause|resume NAME takes the name after the action".into(),
                ));
            }
            let (verb, name, sink) = match action {
                SubscriptionAction::Pause { name, sink } => ("pause", name, sink),
                SubscriptionAction::Resume { name, sink } => ("resume", name, sink),
            };
            let url = format!(
                "{}/api/v1/subscriptions/{name}/{verb}",
                admin.admin.trim_end_matches('/')
            );
            let body = sink.map(|s| {
                let json = serde_json::json!({ "sink": s }).to_string();
                ("application/json", bytes::Bytes::from(json))
            });
            let answer = cli::call(Method::POST, &url, admin.token.as_deref(), body, &[]).await?;
            print(admin.output, &answer, cli::subscriptions_table);
            Ok(())
        }
        Client::Subscriptions {
            admin,
            action: None,
            name,
        } => {
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
        Client::Events {
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
        Client::Events {
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
        Client::Replay {
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
        Client::Deadletters { admin, action } => {
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
                DeadLetterAction::Redeliver { id: Some(id), .. } => {
                    let url = format!("{base}/api/v1/deadletters/{id}/redeliver");
                    let answer =
                        cli::call(Method::POST, &url, admin.token.as_deref(), None, &[]).await?;
                    print(admin.output, &answer, |_| {
                        format!("dead letter {id} requeued")
                    });
                }
                DeadLetterAction::Redeliver {
                    id: None,
                    subscription,
                    sink,
                } => {
                    let url = format!("{base}/api/v1/deadletters/redeliver");
                    let body = serde_json::json!({ "subscription": subscription, "sink": sink });
                    let body = ("application/json", bytes::Bytes::from(body.to_string()));
                    let answer =
                        cli::call(Method::POST, &url, admin.token.as_deref(), Some(body), &[])
                            .await?;
                    print(admin.output, &answer, |a| {
                        let gone = a["gone"].as_array().map_or(0, Vec::len);
                        format!(
                            "{} dead letter(s) requeued{}",
                            a["requeued"],
                            if gone > 0 {
                                format!("; {gone} kept: their events are no longer in the log")
                            } else {
                                String::new()
                            }
                        )
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
    }
}

/// `explain --admin URL`: the running broker's verdicts on the event at `event`.
pub async fn explain_remote(
    event: &Path,
    admin: &str,
    token: Option<&str>,
    output: Output,
) -> Result<(), CliError> {
    use http::Method;
    let event = read_event(event).map_err(cli::CliError::Usage)?;
    let body = bytes::Bytes::from(crate::event::json::encode_event(&event));
    let url = format!("{}/api/v1/explain", admin.trim_end_matches('/'));
    let answer = cli::call(
        Method::POST,
        &url,
        token,
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
