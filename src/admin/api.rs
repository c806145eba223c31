//! The admin API (JSON): subscriptions and their lanes, replay, the stored events, dead
//! letters, and explain. docs/admin-api.yaml describes it; a test keeps the two in line.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{into_axum, Admin};
use crate::clock::SharedClock;
use crate::delivery::Delivery;
use crate::event::{json as event_json, protobuf::format_rfc3339};
use crate::expr::activation;
use crate::expr::filter::{Decision, Dialect};
use crate::http::problem::Problem;
use crate::log::{record, LaneId, Log, LogError, LogRecord, RouteProgress};
use crate::router::{explain, Route, Routing};

/// What the API reads and changes; set when the log is open.
pub struct Api {
    pub log: Log,
    pub routing: Arc<Routing>,
    pub delivery: Arc<Delivery>,
    pub clock: SharedClock,
}

/// The routes, in the order docs/admin-api.yaml lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/subscriptions"),
    ("GET", "/api/v1/subscriptions/{name}"),
    ("POST", "/api/v1/subscriptions/{name}/replay"),
    ("POST", "/api/v1/subscriptions/{name}/pause"),
    ("POST", "/api/v1/subscriptions/{name}/resume"),
    ("GET", "/api/v1/brokers"),
    ("GET", "/api/v1/brokers/{broker}/events"),
    ("GET", "/api/v1/brokers/{broker}/events/{seq}"),
    ("GET", "/api/v1/deadletters"),
    ("POST", "/api/v1/deadletters/{id}/redeliver"),
    ("POST", "/api/v1/deadletters/redeliver"),
    ("DELETE", "/api/v1/deadletters/{id}"),
    ("POST", "/api/v1/explain"),
];

pub fn routes() -> Router<Arc<Admin>> {
    Router::new()
        .route("/api/v1/subscriptions", get(list_subscriptions))
        .route("/api/v1/subscriptions/{name}", get(get_subscription))
        .route("/api/v1/subscriptions/{name}/replay", post(replay))
        .route(
            "/api/v1/subscriptions/{name}/pause",
            post(async |s, p, b| pause(s, p, b, true).await),
        )
        .route(
            "/api/v1/subscriptions/{name}/resume",
            post(async |s, p, b| pause(s, p, b, false).await),
        )
        .route("/api/v1/brokers", get(list_brokers))
        .route("/api/v1/brokers/{broker}/events", get(list_events))
        .route("/api/v1/brokers/{broker}/events/{seq}", get(get_event))
        .route("/api/v1/deadletters", get(list_dead_letters))
        .route("/api/v1/deadletters/{id}/redeliver", post(redeliver))
        .route("/api/v1/deadletters/redeliver", post(redeliver_all))
        .route(
            "/api/v1/deadletters/{id}",
            axum::routing::delete(delete_dead_letter),
        )
        .route("/api/v1/explain", post(explain_event))
}

/// An API error: a problem+json answer (boxed: it is large and rare).
pub struct ApiError(Box<Problem>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        into_axum(self.0.into_response())
    }
}

fn problem(status: StatusCode, title: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError(Box::new(Problem::new(status, title, detail)))
}

fn api(admin: &Admin) -> Result<&Api, ApiError> {
    admin.api.get().ok_or_else(|| {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Starting",
            "the log is still opening",
        )
    })
}

/// A storage failure, as the API answers it.
fn unavailable(e: LogError) -> ApiError {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Storage Unavailable",
        e.to_string(),
    )
}

fn time(nanos: u64) -> String {
    format_rfc3339(
        (nanos / 1_000_000_000) as i64,
        (nanos % 1_000_000_000) as u32,
    )
}

fn dialect_json(d: &Dialect) -> Value {
    let pairs = |p: &[(String, String)]| {
        Value::Object(
            p.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    };
    match d {
        Dialect::Exact(p) => json!({ "exact": pairs(p) }),
        Dialect::Prefix(p) => json!({ "prefix": pairs(p) }),
        Dialect::Suffix(p) => json!({ "suffix": pairs(p) }),
        Dialect::All(list) => json!({ "all": list.iter().map(dialect_json).collect::<Vec<_>>() }),
        Dialect::Any(list) => json!({ "any": list.iter().map(dialect_json).collect::<Vec<_>>() }),
        Dialect::Not(inner) => json!({ "not": dialect_json(inner) }),
        Dialect::Sql(expr) => json!({ "sql": expr.source() }),
    }
}

/// A subscription with the state of each of its lanes.
/// What a lane is doing, in one word: `paused`, `sending`, or its breaker's state
/// (`open`, `half-open`) while that stops it.
fn lane_state(paused: bool, breaker: Option<&str>) -> &'static str {
    match breaker {
        _ if paused => "paused",
        Some("open") => "open",
        Some("half-open") => "half-open",
        _ => "sending",
    }
}

async fn subscription_json(api: &Api, route: &Arc<Route>) -> Result<Value, ApiError> {
    let s = &route.subscription;
    let mut lanes = Vec::new();
    for lane in &route.lanes {
        let stats = api.delivery.stats(&s.broker, lane);
        let store = api.log.lanes();
        let depth = store.depth(&s.broker, lane).await.map_err(unavailable)?;
        // A shared lane's entries are claimed when read: its depth names the oldest.
        let cursor = if store.shared() {
            depth.oldest
        } else {
            store
                .entries(&s.broker, lane, 0, 1)
                .await
                .map_err(unavailable)?
                .first()
                .map(|e| e.seq)
        };
        let last_error = stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let breaker = *stats.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let paused = stats.paused.load(Ordering::Relaxed);
        lanes.push(json!({
            "sink": lane.sink,
            "state": lane_state(paused, breaker.map(|(state, _)| state)),
            "paused": paused,
            "breaker": breaker.map(|(state, since)| json!({ "state": state, "since": time(since) })),
            "cursor": cursor,
            "lag": depth.pending,
            "inFlight": stats.in_flight.load(Ordering::Relaxed),
            "parked": depth.parked,
            "delivered": stats.delivered.load(Ordering::Relaxed),
            "deadLettered": stats.dead_lettered.load(Ordering::Relaxed),
            "lastError": last_error.map(|(message, at)| json!({ "message": message, "time": time(at) })),
        }));
    }
    let f = &s.filter;
    Ok(json!({
        "name": s.name,
        "broker": s.broker,
        "file": s.file.display().to_string(),
        "filter": {
            "attributes": f.attributes.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "filters": f.filters.iter().map(dialect_json).collect::<Vec<_>>(),
            "cel": f.cel.as_ref().map(|c| c.source()),
        },
        "matched": route.stats.matched.load(Ordering::Relaxed),
        "notMatched": route.stats.not_matched.load(Ordering::Relaxed),
        "errors": route.stats.errors.load(Ordering::Relaxed),
        "lanes": lanes,
    }))
}

fn find(api: &Api, name: &str) -> Result<Arc<Route>, ApiError> {
    api.routing
        .current()
        .routes()
        .find(|r| r.subscription.name == name)
        .cloned()
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                "Unknown Subscription",
                format!("there is no subscription '{name}'"),
            )
        })
}

async fn list_subscriptions(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let api = api(&admin)?;
    let set = api.routing.current();
    let mut routes: Vec<&Arc<Route>> = set.routes().collect();
    routes.sort_by(|a, b| a.subscription.name.cmp(&b.subscription.name));
    let mut out = Vec::new();
    for r in routes {
        out.push(subscription_json(api, r).await?);
    }
    Ok(Json(out).into_response())
}

async fn get_subscription(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let v = {
        let api = api(&admin)?;
        let route = find(api, &name)?;
        subscription_json(api, &route).await
    }?;
    Ok(Json(v).into_response())
}

/// A position in a broker's log: a sequence number or an RFC 3339 time.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Position {
    Seq(u64),
    Time(String),
}

#[derive(Debug, Deserialize)]
pub struct ReplayRequest {
    pub from: Position,
    pub to: Option<Position>,
    pub sink: Option<String>,
}

async fn resolve(api: &Api, broker: &str, p: &Position) -> Result<u64, ApiError> {
    match p {
        Position::Seq(s) => Ok(*s),
        Position::Time(t) => {
            let (secs, nanos) = crate::event::validate::parse_rfc3339(t)
                .map_err(|e| problem(StatusCode::BAD_REQUEST, "Bad Position", e))?;
            let at = u64::try_from(secs)
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                + u64::from(nanos);
            api.log.seq_at_time(broker, at).await.map_err(unavailable)
        }
    }
}

/// `POST .../pause` and `.../resume`: every lane of the subscription, or the one of
/// `{"sink": uri}`; answers the subscription as `GET` does.
async fn pause(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Bytes,
    paused: bool,
) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        sink: Option<String>,
    }
    let api = api(&admin)?;
    let route = find(api, &name)?;
    let request: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request { sink: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            problem(
                StatusCode::BAD_REQUEST,
                "Bad Pause Request",
                format!("expected no body or {{\"sink\": uri}}: {e}"),
            )
        })?
    };
    let lanes: Vec<LaneId> = match &request.sink {
        None => route.lanes.clone(),
        Some(sink) => vec![route
            .lanes
            .iter()
            .find(|l| &l.sink == sink)
            .cloned()
            .ok_or_else(|| {
                problem(
                    StatusCode::NOT_FOUND,
                    "Unknown Sink",
                    format!("'{name}' has no sink {sink}"),
                )
            })?],
    };
    for lane in &lanes {
        api.delivery
            .set_paused(&route.subscription.broker, lane, paused)
            .await
            .map_err(unavailable)?;
    }
    Ok(Json(subscription_json(api, &route).await?).into_response())
}

async fn replay(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v = {
        let api = api(&admin)?;
        let route = find(api, &name)?;
        let request: ReplayRequest = serde_json::from_slice(&body).map_err(|e| problem(StatusCode::BAD_REQUEST, "Bad Replay Request", format!("expected {{\"from\": seq or RFC 3339 time, \"to\"?: ..., \"sink\"?: uri}}: {e}")))?;
        let broker = route.subscription.broker.clone();
        let lanes: Vec<LaneId> = match &request.sink {
            None => route.lanes.clone(),
            Some(sink) => {
                let lane = route.lanes.iter().find(|l| &l.sink == sink).cloned();
                vec![lane.ok_or_else(|| {
                    problem(
                        StatusCode::NOT_FOUND,
                        "Unknown Sink",
                        format!("'{name}' has no sink {sink}"),
                    )
                })?]
            }
        };
        let from = resolve(api, &broker, &request.from).await?.max(1);
        let head = api.log.head(&broker).unwrap_or(0);
        let to = match &request.to {
            None => head,
            // A time bound is exclusive: events that arrived before it.
            Some(p @ Position::Time(_)) => resolve(api, &broker, p).await?.saturating_sub(1),
            Some(Position::Seq(s)) => *s,
        }
        .min(head);
        let mut queued = 0u64;
        let mut next = from;
        let mut needs = activation::Needs::default();
        if let Some(c) = &route.subscription.filter.cel {
            needs.add(c.variables());
        }
        while next <= to {
            let records = api
                .log
                .read(&broker, next, 256)
                .await
                .map_err(unavailable)?;
            let Some(last) = records.last().map(|r| r.seq) else {
                break;
            };
            let (matched, entries) = replay_entries(&route, &lanes, &needs, &records, to);
            queued += matched;
            api.log
                .lanes()
                .record_routes(&broker, &entries, &RouteProgress::None)
                .await
                .map_err(unavailable)?;
            next = last + 1;
        }
        api.routing.notify_routed(&broker);
        Ok(json!({ "queued": queued, "from": from, "to": to }))
    }?;
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// How many of the records up to `to` match the subscription, and their lane entries.
fn replay_entries(
    route: &Route,
    lanes: &[LaneId],
    needs: &activation::Needs,
    records: &[LogRecord],
    to: u64,
) -> (u64, Vec<(LaneId, u64)>) {
    let base = activation::base();
    let mut matched = 0;
    let mut entries = Vec::new();
    for rec in records.iter().filter(|rec| rec.seq <= to) {
        let data = if needs.data {
            activation::parse_data(&rec.event)
        } else {
            None
        };
        let act = activation::activation(&base, &rec.event, data.as_ref(), needs);
        let input = crate::expr::cost::Input::new(&rec.event, data.as_ref());
        if route.subscription.filter.decide(&input, &act) == Decision::Match {
            matched += 1;
            entries.extend(lanes.iter().map(|l| (l.clone(), rec.seq)));
        }
    }
    (matched, entries)
}

/// A stored event as the API shows it. `event` is the JSON format's text, written as
/// it is rather than through a parsed value: whatever was accepted is shown exactly
/// (`data` nested past any parser's depth, `1e999`, a 5,000-digit number, a lone
/// surrogate escape), and a listing costs its text's size, not a value tree's.
#[derive(serde::Serialize)]
struct RecordView<'a> {
    seq: u64,
    arrival: String,
    hops: u32,
    event: &'a serde_json::value::RawValue,
}

/// The JSON format's text of `event`, as a raw JSON value.
fn raw_event(event: &crate::event::Event) -> Box<serde_json::value::RawValue> {
    let text = String::from_utf8(event_json::encode_event(event)).unwrap_or_default();
    serde_json::value::RawValue::from_string(text).unwrap_or_else(|_| {
        // The encoder writes JSON; a text that is not is shown as null, never as garbage.
        serde_json::value::RawValue::from_string("null".into()).unwrap_or_default()
    })
}

fn write_record(out: &mut Vec<u8>, r: &LogRecord) {
    let event = raw_event(&r.event);
    let view = RecordView {
        seq: r.seq,
        arrival: time(r.arrival_unix_nanos),
        hops: r.hops,
        event: &event,
    };
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(out, &view);
}

fn json_response(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// A page of events stops after the event that takes it past this many bytes (and
/// at `limit` events): a listing of large events holds one page, not `limit` events.
pub const PAGE_BYTES: usize = 8 << 20;

/// Events are read for a page this many at a time.
const PAGE_READ: usize = 16;

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list_events(
    State(admin): State<Arc<Admin>>,
    Path(broker): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let v = {
        let api = api(&admin)?;
        if api.log.broker(&broker).is_none() {
            return Err(problem(
                StatusCode::NOT_FOUND,
                "Unknown Broker",
                format!("there is no broker '{broker}'"),
            ));
        }
        let mut from = q.after.unwrap_or(0) + 1;
        let limit = q.limit.unwrap_or(100).min(1000);
        let mut out = vec![b'['];
        let mut listed = 0;
        while listed < limit && out.len() < PAGE_BYTES {
            let n = PAGE_READ.min(limit - listed);
            let records = api.log.read(&broker, from, n).await.map_err(unavailable)?;
            for r in &records {
                if listed == limit || out.len() >= PAGE_BYTES {
                    break;
                }
                if listed > 0 {
                    out.push(b',');
                }
                write_record(&mut out, r);
                listed += 1;
                from = r.seq + 1;
            }
            if records.len() < n {
                break;
            }
        }
        out.push(b']');
        Ok(out)
    }?;
    Ok(json_response(v))
}

/// Every broker with its log's head and what the log holds.
async fn list_brokers(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let api = api(&admin)?;
    let mut out = Vec::new();
    for broker in api.log.brokers() {
        let stats = api.log.stats(broker).await.map_err(unavailable)?;
        out.push(json!({
            "name": broker.as_ref(),
            "head": api.log.head(broker).unwrap_or(0),
            "storedEvents": stats.stored.events,
            "storedBytes": stats.stored.bytes,
        }));
    }
    Ok(Json(out).into_response())
}

async fn get_event(
    State(admin): State<Arc<Admin>>,
    Path((broker, seq)): Path<(String, u64)>,
) -> Result<Response, ApiError> {
    let v = {
        let api = api(&admin)?;
        if api.log.broker(&broker).is_none() {
            return Err(problem(
                StatusCode::NOT_FOUND,
                "Unknown Broker",
                format!("there is no broker '{broker}'"),
            ));
        }
        match api.log.get(&broker, seq).await.map_err(unavailable)? {
            Some(r) => {
                let mut out = Vec::new();
                write_record(&mut out, &r);
                Ok(out)
            }
            None => Err(problem(
                StatusCode::NOT_FOUND,
                "No Such Event",
                format!("there is no event {seq}"),
            )),
        }
    }?;
    Ok(json_response(v))
}

#[derive(Debug, Deserialize)]
struct DeadLetterQuery {
    subscription: Option<String>,
    sink: Option<String>,
}

async fn list_dead_letters(
    State(admin): State<Arc<Admin>>,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Response, ApiError> {
    let v = {
        let api = api(&admin)?;
        let letters = api.log.dead_letters().list().await.map_err(unavailable)?;
        let out: Vec<DeadLetterView> = letters
            .into_iter()
            .filter(|(_, l)| {
                q.subscription.as_ref().is_none_or(|s| &l.subscription == s)
                    && q.sink.as_ref().is_none_or(|s| &l.sink == s)
            })
            .map(|(id, l)| {
                // Shown as exactly as the events listing shows a stored event.
                let event = base64::engine::general_purpose::STANDARD
                    .decode(&l.record)
                    .ok()
                    .and_then(|b| record::decode(l.seq, Bytes::from(b)))
                    .map(|r| raw_event(&r.event));
                DeadLetterView {
                    id,
                    time: time(l.time_unix_nanos),
                    broker: l.broker,
                    subscription: l.subscription,
                    sink: l.sink,
                    seq: l.seq,
                    attempts: l.attempts,
                    last_status: l.last_status,
                    last_error: l.last_error,
                    dead_letter_sink_delivered: l.dead_letter_sink_delivered,
                    event,
                }
            })
            .collect();
        serde_json::to_vec(&out).map_err(|e| {
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Error",
                e.to_string(),
            )
        })
    }?;
    Ok(json_response(v))
}

/// A dead letter as the API lists it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetterView {
    id: u64,
    broker: String,
    subscription: String,
    sink: String,
    seq: u64,
    attempts: u32,
    last_status: Option<u16>,
    last_error: String,
    time: String,
    dead_letter_sink_delivered: bool,
    event: Option<Box<serde_json::value::RawValue>>,
}

async fn redeliver(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let api = api(&admin)?;
    let letter = api
        .log
        .dead_letters()
        .get(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                "No Such Dead Letter",
                format!("there is no dead letter {id}"),
            )
        })?;
    let v = requeue_letter(api, id, &letter).await?;
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// Puts a dead letter's event back into its lane and deletes the letter.
async fn requeue_letter(
    api: &Api,
    id: u64,
    letter: &crate::log::DeadLetter,
) -> Result<Value, ApiError> {
    let lane = LaneId::new(letter.subscription.clone(), letter.sink.clone());
    let seq = letter.seq;
    let present = api
        .log
        .get(&letter.broker, seq)
        .await
        .map_err(unavailable)?
        .is_some();
    if !present {
        return Err(problem(
            StatusCode::CONFLICT,
            "Event Gone",
            format!("event {seq} is no longer in the log; the dead letter keeps it for inspection"),
        ));
    }
    // The entry is durable before the letter goes: a crash between them keeps both,
    // never neither.
    api.log
        .lanes()
        .requeue(&letter.broker, &lane, seq)
        .await
        .map_err(unavailable)?;
    api.log
        .dead_letters()
        .delete(id)
        .await
        .map_err(unavailable)?;
    api.routing.notify_routed(&letter.broker);
    Ok(
        json!({ "id": id, "requeued": { "subscription": lane.subscription, "sink": lane.sink, "seq": seq } }),
    )
}

/// `POST /api/v1/deadletters/redeliver` `{"subscription": name, "sink"?: uri}`: every dead
/// letter of the subscription (or of one of its sinks) back into its lane. Letters whose
/// event retention deleted stay, counted as `gone`.
async fn redeliver_all(State(admin): State<Arc<Admin>>, body: Bytes) -> Result<Response, ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        subscription: String,
        sink: Option<String>,
    }
    let api = api(&admin)?;
    let request: Request = serde_json::from_slice(&body).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            "Bad Redelivery Request",
            format!("expected {{\"subscription\": name, \"sink\"?: uri}}: {e}"),
        )
    })?;
    let letters = api.log.dead_letters().list().await.map_err(unavailable)?;
    let (mut requeued, mut gone) = (0u64, Vec::new());
    for (id, letter) in letters.iter().filter(|(_, l)| {
        l.subscription == request.subscription && request.sink.as_ref().is_none_or(|s| &l.sink == s)
    }) {
        match requeue_letter(api, *id, letter).await {
            Ok(_) => requeued += 1,
            Err(e) if e.0.status == StatusCode::CONFLICT => gone.push(*id),
            Err(e) => return Err(e),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "requeued": requeued, "gone": gone })),
    )
        .into_response())
}

async fn delete_dead_letter(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let v = {
        let api = api(&admin)?;
        if api
            .log
            .dead_letters()
            .delete(id)
            .await
            .map_err(unavailable)?
        {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(problem(
                StatusCode::NOT_FOUND,
                "No Such Dead Letter",
                format!("there is no dead letter {id}"),
            ))
        }
    }?;
    Ok(v)
}

async fn explain_event(State(admin): State<Arc<Admin>>, body: Bytes) -> Result<Response, ApiError> {
    let api = api(&admin)?;
    let event =
        event_json::decode_event(&body).map_err(|e| ApiError(Box::new(Problem::from(e))))?;
    let set = api.routing.current();
    let verdicts = crate::delivery::explain(set.routes().map(|r| &r.subscription), &event);
    Ok(Json(explain::to_json(&verdicts)).into_response())
}
