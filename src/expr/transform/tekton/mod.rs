//! The `tekton-to-cdevents` transform preset: Tekton's TaskRun and PipelineRun events as
//! CDEvents v0.5.1, wrapped in a CloudEvent by the CDEvents CloudEvents binding.
//!
//! This module owns the translation only: one pure function from a Tekton CloudEvent to a
//! CDEvent CloudEvent, a reason to skip it, or an error for the dead-letter record. It does
//! no I/O and reads no clock, so a redelivery translates to the same bytes.
//!
//! Decisions:
//! - **What is translated.** `pipelinerun.{queued,started,successful,failed}` and
//!   `taskrun.{started,successful,failed}`, the Tekton events that have a CDEvents v0.5.1
//!   counterpart (`successful` and `failed` both become `finished`, with an `outcome`).
//!   Every other type (running, unknown, taskrun queued, CustomRun, v1alpha1 Run, anything
//!   not Tekton's) is [`Translated::Skipped`] with a reason, before its data is parsed.
//! - **A deterministic id.** `context.id` is a UUID version 5 (RFC 9562, §5.5) of
//!   `"<Tekton source>#<Tekton id>"` in the URL namespace: a redelivered Tekton event gives
//!   the same CDEvent id, so receivers can deduplicate.
//! - **The timestamp.** The Tekton event's `time`; without one, the time the run's
//!   `Succeeded` condition last changed, its completion or start time, or its creation time.
//! - **The `uri`.** The Tekton Dashboard's page of the run when [`Options::dashboard_url`] is
//!   set; otherwise the run's Kubernetes API URL. It is always written, because
//!   `pipelinerun.started` requires it. Kubernetes object names need no percent-encoding,
//!   and a name that is not one is an error rather than a broken URI.
//! - **The outcome.** From the `Succeeded` condition: `True` is `success`; `False` is
//!   `cancel` when the reason says the run was cancelled or stopped, `failure` when the
//!   reason is `Failed` (a step or task failed), and `error` for every other reason
//!   (timeouts, missing tasks, validation), which Tekton raises when the run could not
//!   do its work. A finished event without the condition is an `error` too.
//! - **Parsing.** The data is read once into structs that keep only the fields used here;
//!   the rest (managed fields, embedded specs, step states) is skipped without being built.

use bytes::Bytes;

use crate::event::{AttrValue, Data, Event};

mod wire;
use wire::{Body, Condition, Content, Context, Document, RunRef, Subject};

/// Options of the preset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// The Tekton Dashboard's base URL (`https://tekton.example.com`, a trailing `/` is
    /// dropped): when set, a run's `uri` is its Dashboard page.
    pub dashboard_url: Option<String>,
}

/// What the preset makes of one event.
#[derive(Debug)]
pub enum Translated {
    /// The CDEvent, as a CloudEvent in the CDEvents binding.
    Event(Event),
    /// The event has no CDEvents counterpart; why, in words for a log line.
    Skipped(&'static str),
}

/// The CDEvents specification version the preset writes.
pub const CDEVENTS_SPECVERSION: &str = "0.5.1";

/// The URL namespace of name-based UUIDs, `6ba7b811-9dad-11d1-80b4-00c04fd430c8`
/// (RFC 9562, §6.6).
pub const NAMESPACE_URL: [u8; 16] = [
    0x6b, 0xa7, 0xb8, 0x11, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8,
];

/// Where a run's `uri` points without a Dashboard: the API server as seen from inside
/// the cluster, at the `tekton.dev/v1` API.
const KUBERNETES_API: &str = "https://kubernetes.default.svc/apis/tekton.dev/v1";

/// Translates one Tekton event into a CDEvent.
///
/// `Err` is a Tekton run event that cannot be translated (data that is not JSON, a run
/// without a name, namespace or any timestamp); the message says what is missing.
pub fn to_cdevents(event: &Event, options: &Options) -> Result<Translated, String> {
    let target = match classify(event.ty()) {
        Ok(target) => target,
        Err(reason) => return Ok(Translated::Skipped(reason)),
    };
    let kind = target.kind;
    let body = parse_body(event.data(), kind)?;
    let run = match kind {
        Kind::PipelineRun => body.pipeline_run,
        Kind::TaskRun => body.task_run,
    }
    .ok_or_else(|| format!("the event's data has no {} object", kind.body_key()))?;
    let metadata = run.metadata.unwrap_or_default();
    let labels = metadata.labels.unwrap_or_default();
    let status = run.status.unwrap_or_default();
    let spec = run.spec.unwrap_or_default();
    let name = required_name(metadata.name.as_deref(), kind, "name")?;
    let namespace = required_name(metadata.namespace.as_deref(), kind, "namespace")?;
    let succeeded = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.ty.as_deref() == Some("Succeeded"));

    let timestamp = [
        event.get_str("time"),
        succeeded.and_then(|c| c.last_transition_time.as_deref()),
        status.completion_time.as_deref(),
        status.start_time.as_deref(),
        metadata.creation_timestamp.as_deref(),
    ]
    .into_iter()
    .flatten()
    .find(|t| !t.is_empty())
    .ok_or_else(|| {
        format!(
            "the event has no time, and the {} has no Succeeded condition time, \
             status.completionTime, status.startTime or metadata.creationTimestamp",
            kind.user_name()
        )
    })?;

    let source = event.source();
    let id = uuid_v5(NAMESPACE_URL, format!("{source}#{}", event.id()).as_bytes());
    let subject_id = format!("{namespace}/{name}");
    let uri = match options.dashboard_url.as_deref() {
        Some(d) => format!(
            "{}/#/namespaces/{namespace}/{}/{name}",
            d.strip_suffix('/').unwrap_or(d),
            kind.resource()
        ),
        None => format!(
            "{KUBERNETES_API}/namespaces/{namespace}/{}/{name}",
            kind.resource()
        ),
    };
    let first = |names: &[Option<&str>]| -> String {
        names
            .iter()
            .flatten()
            .find(|n| !n.is_empty())
            .copied()
            .unwrap_or(name)
            .to_owned()
    };
    let (pipeline_name, task_name, pipeline_run) = match kind {
        Kind::PipelineRun => {
            let ref_name = spec.pipeline_ref.and_then(|r| r.name);
            let named = first(&[ref_name.as_deref(), labels.pipeline.as_deref()]);
            (Some(named), None, None)
        }
        Kind::TaskRun => {
            let ref_name = spec.task_ref.and_then(|r| r.name);
            let named = first(&[
                ref_name.as_deref(),
                labels.task.as_deref(),
                labels.pipeline_task.as_deref(),
            ]);
            let parent = labels
                .pipeline_run
                .filter(|p| !p.is_empty())
                .map(|p| RunRef {
                    id: format!("{namespace}/{p}"),
                });
            (None, Some(named), parent)
        }
    };
    let (outcome, errors) = match target.phase {
        Phase::Finished => {
            let (outcome, errors) = finished(succeeded);
            (Some(outcome.as_str()), errors)
        }
        Phase::Queued | Phase::Started => (None, None),
    };

    let document = Document {
        context: Context {
            specversion: CDEVENTS_SPECVERSION,
            id: &id,
            source,
            ty: target.cdevents_type,
            timestamp,
        },
        subject: Subject {
            id: &subject_id,
            content: Content {
                pipeline_name,
                task_name,
                uri,
                pipeline_run,
                outcome,
                errors,
            },
        },
    };
    let data = serde_json::to_vec(&document).map_err(|e| format!("writing the CDEvent: {e}"))?;
    let string = |s: &str| AttrValue::String(s.to_owned());
    let attributes = vec![
        ("specversion".to_owned(), string("1.0")),
        ("id".to_owned(), string(&id)),
        ("source".to_owned(), AttrValue::UriRef(source.to_owned())),
        ("type".to_owned(), string(target.cdevents_type)),
        ("subject".to_owned(), string(&subject_id)),
        (
            "time".to_owned(),
            AttrValue::Timestamp(timestamp.to_owned()),
        ),
        ("datacontenttype".to_owned(), string("application/json")),
    ];
    Event::new(attributes, Some(Data::Json(Bytes::from(data))))
        .map(Translated::Event)
        .map_err(|e| format!("the CDEvent is not a valid CloudEvent: {e}"))
}

/// A name-based UUID, version 5 (SHA-1), of `name` in `namespace` (RFC 9562, §5.5), in
/// its lower-case hyphenated form.
pub fn uuid_v5(namespace: [u8; 16], name: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&namespace);
    ctx.update(name);
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    // SHA-1 digests are 20 bytes; the UUID is the first 16.
    for (b, d) in bytes.iter_mut().zip(digest.as_ref()) {
        *b = *d;
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x50; // version 5
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10xx
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// Which object a Tekton event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PipelineRun,
    TaskRun,
}

impl Kind {
    /// The key of the object in the event's data.
    fn body_key(self) -> &'static str {
        match self {
            Kind::PipelineRun => "pipelineRun",
            Kind::TaskRun => "taskRun",
        }
    }

    /// The name users know the object by.
    fn user_name(self) -> &'static str {
        match self {
            Kind::PipelineRun => "PipelineRun",
            Kind::TaskRun => "TaskRun",
        }
    }

    /// The resource in Kubernetes API and Dashboard paths.
    fn resource(self) -> &'static str {
        match self {
            Kind::PipelineRun => "pipelineruns",
            Kind::TaskRun => "taskruns",
        }
    }
}

/// Where the run is in its life, as far as CDEvents tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Queued,
    Started,
    Finished,
}

/// The CDEvent a Tekton event type becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    kind: Kind,
    phase: Phase,
    cdevents_type: &'static str,
}

/// The CDEvent of a Tekton event type, or why there is none.
fn classify(ty: &str) -> Result<Target, &'static str> {
    let (kind, phase, cdevents_type) = match ty {
        "dev.tekton.event.pipelinerun.queued.v1" => (
            Kind::PipelineRun,
            Phase::Queued,
            "dev.cdevents.pipelinerun.queued.0.3.0",
        ),
        "dev.tekton.event.pipelinerun.started.v1" => (
            Kind::PipelineRun,
            Phase::Started,
            "dev.cdevents.pipelinerun.started.0.3.0",
        ),
        "dev.tekton.event.pipelinerun.successful.v1" | "dev.tekton.event.pipelinerun.failed.v1" => {
            (
                Kind::PipelineRun,
                Phase::Finished,
                "dev.cdevents.pipelinerun.finished.0.3.0",
            )
        }
        "dev.tekton.event.taskrun.started.v1" => (
            Kind::TaskRun,
            Phase::Started,
            "dev.cdevents.taskrun.started.0.3.0",
        ),
        "dev.tekton.event.taskrun.successful.v1" | "dev.tekton.event.taskrun.failed.v1" => (
            Kind::TaskRun,
            Phase::Finished,
            "dev.cdevents.taskrun.finished.0.3.0",
        ),
        "dev.tekton.event.taskrun.queued.v1" => {
            return Err("dev.tekton.event.taskrun.queued.v1 has no CDEvents counterpart")
        }
        "dev.tekton.event.taskrun.running.v1" => {
            return Err("dev.tekton.event.taskrun.running.v1 has no CDEvents counterpart")
        }
        "dev.tekton.event.taskrun.unknown.v1" => {
            return Err("dev.tekton.event.taskrun.unknown.v1 has no CDEvents counterpart")
        }
        "dev.tekton.event.pipelinerun.running.v1" => {
            return Err("dev.tekton.event.pipelinerun.running.v1 has no CDEvents counterpart")
        }
        "dev.tekton.event.pipelinerun.unknown.v1" => {
            return Err("dev.tekton.event.pipelinerun.unknown.v1 has no CDEvents counterpart")
        }
        t if t.starts_with("dev.tekton.event.customrun.") => {
            return Err(
                "CustomRun events (dev.tekton.event.customrun.*) have no CDEvents counterpart",
            )
        }
        t if t.starts_with("dev.tekton.event.run.") => {
            return Err("Run events (dev.tekton.event.run.*) have no CDEvents counterpart")
        }
        _ => {
            return Err("not a Tekton PipelineRun or TaskRun event that has a CDEvents counterpart")
        }
    };
    Ok(Target {
        kind,
        phase,
        cdevents_type,
    })
}

/// Reads the event's data, JSON whichever way it was carried.
fn parse_body(data: Option<&Data>, kind: Kind) -> Result<Body, String> {
    let text: &[u8] = match data {
        None => {
            return Err(format!(
                "the event has no data (a {} event carries the {0})",
                kind.user_name()
            ))
        }
        Some(Data::Binary(b) | Data::Json(b)) => b.as_ref(),
        Some(Data::Text(s)) => s.as_bytes(),
        Some(Data::Proto { .. }) => return Err("the event's data is protobuf, not JSON".into()),
    };
    serde_json::from_slice(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!(
            "the event's data is not a {} event's: {e}",
            kind.user_name()
        ),
        _ => format!("the event's data is not JSON: {e}"),
    })
}

/// A name that must be there and must be a Kubernetes object name (RFC 1123 lower-case
/// letters, digits, `-` and `.`), so that it can stand in a URI as it is.
fn required_name<'a>(value: Option<&'a str>, kind: Kind, field: &str) -> Result<&'a str, String> {
    match value {
        None | Some("") => Err(format!("the {} has no metadata.{field}", kind.user_name())),
        Some(v)
            if v.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
            }) =>
        {
            Ok(v)
        }
        Some(v) => Err(format!(
            "the {}'s metadata.{field} {v:?} is not a Kubernetes object name",
            kind.user_name()
        )),
    }
}

/// How a finished run ended (CDEvents `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure,
    Cancel,
    Error,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Cancel => "cancel",
            Outcome::Error => "error",
        }
    }
}

/// The outcome of a `Succeeded` condition's status and reason. Tekton's cancel reasons
/// are `Cancelled`, `PipelineRunCancelled`, `TaskRunCancelled`, `CancelledRunFinally`
/// and `StoppedRunFinally`; `Failed` is a failed step or task; anything else (a timeout,
/// a task that could not be fetched, a spec that did not validate) kept the run from
/// doing its work.
fn outcome(status: &str, reason: &str) -> Outcome {
    match status {
        "True" => Outcome::Success,
        "False" if reason.contains("Cancelled") || reason.starts_with("Stopped") => Outcome::Cancel,
        "False" if reason == "Failed" => Outcome::Failure,
        _ => Outcome::Error,
    }
}

/// The outcome of a finished run and, unless it succeeded, what went wrong.
fn finished(succeeded: Option<&Condition>) -> (Outcome, Option<String>) {
    let Some(c) = succeeded else {
        return (
            Outcome::Error,
            Some("the run has no Succeeded condition".to_owned()),
        );
    };
    let reason = c.reason.as_deref().unwrap_or_default();
    let outcome = outcome(c.status.as_deref().unwrap_or_default(), reason);
    if outcome == Outcome::Success {
        return (outcome, None);
    }
    let message = c.message.as_deref().map(str::trim_end).unwrap_or_default();
    let errors = [message, reason].into_iter().find(|s| !s.is_empty());
    (outcome, errors.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v5_matches_the_rfc_9562_vector() {
        // RFC 9562, appendix A.4: "www.example.com" in the DNS namespace.
        let dns = [
            0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4,
            0x30, 0xc8,
        ];
        assert_eq!(
            uuid_v5(dns, b"www.example.com"),
            "2ed6657d-e927-568b-95e1-2665a8aea6a2"
        );
    }

    #[test]
    fn succeeded_conditions_map_to_cdevents_outcomes() {
        for (status, reason, want) in [
            ("True", "Succeeded", Outcome::Success),
            ("True", "Completed", Outcome::Success),
            ("False", "Failed", Outcome::Failure),
            ("False", "PipelineRunCancelled", Outcome::Cancel),
            ("False", "TaskRunCancelled", Outcome::Cancel),
            ("False", "Cancelled", Outcome::Cancel),
            ("False", "CancelledRunFinally", Outcome::Cancel),
            ("False", "StoppedRunFinally", Outcome::Cancel),
            ("False", "PipelineRunTimeout", Outcome::Error),
            ("False", "TaskRunTimeout", Outcome::Error),
            ("False", "CouldntGetTask", Outcome::Error),
            ("False", "", Outcome::Error),
            ("Unknown", "Running", Outcome::Error),
        ] {
            assert_eq!(outcome(status, reason), want, "{status}/{reason}");
        }
    }

    fn condition(status: &str, reason: Option<&str>, message: Option<&str>) -> Condition {
        Condition {
            ty: Some("Succeeded".into()),
            status: Some(status.into()),
            reason: reason.map(Into::into),
            message: message.map(Into::into),
            last_transition_time: None,
        }
    }

    #[test]
    fn errors_are_the_trimmed_message_else_the_reason() {
        let failed = condition("False", Some("Failed"), Some("step exited 1\n"));
        assert_eq!(
            finished(Some(&failed)),
            (Outcome::Failure, Some("step exited 1".into()))
        );
        let timeout = condition("False", Some("PipelineRunTimeout"), None);
        assert_eq!(
            finished(Some(&timeout)),
            (Outcome::Error, Some("PipelineRunTimeout".into()))
        );
        let ok = condition("True", Some("Succeeded"), Some("All Steps have completed"));
        assert_eq!(finished(Some(&ok)), (Outcome::Success, None));
        assert_eq!(
            finished(None),
            (
                Outcome::Error,
                Some("the run has no Succeeded condition".into())
            )
        );
    }
}
