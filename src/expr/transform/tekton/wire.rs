//! The shapes read and written: the parts of a Tekton run event's data the translation
//! uses (everything else is skipped unparsed), and the CDEvent document, its fields in
//! the schemas' order.

use serde::{Deserialize, Serialize};

/// The event's data: one of these, by the event's type.
#[derive(Deserialize)]
pub(super) struct Body {
    #[serde(rename = "pipelineRun")]
    pub(super) pipeline_run: Option<Run>,
    #[serde(rename = "taskRun")]
    pub(super) task_run: Option<Run>,
}

/// The parts of a PipelineRun or TaskRun the CDEvent is made of.
#[derive(Deserialize, Default)]
pub(super) struct Run {
    pub(super) metadata: Option<Metadata>,
    pub(super) spec: Option<Spec>,
    pub(super) status: Option<Status>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Metadata {
    pub(super) name: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) creation_timestamp: Option<String>,
    pub(super) labels: Option<Labels>,
}

/// The labels Tekton puts on runs that name what they run and what they belong to.
#[derive(Deserialize, Default)]
pub(super) struct Labels {
    #[serde(rename = "tekton.dev/pipeline")]
    pub(super) pipeline: Option<String>,
    #[serde(rename = "tekton.dev/task")]
    pub(super) task: Option<String>,
    #[serde(rename = "tekton.dev/pipelineTask")]
    pub(super) pipeline_task: Option<String>,
    #[serde(rename = "tekton.dev/pipelineRun")]
    pub(super) pipeline_run: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Spec {
    pub(super) pipeline_ref: Option<Ref>,
    pub(super) task_ref: Option<Ref>,
}

#[derive(Deserialize)]
pub(super) struct Ref {
    pub(super) name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct Status {
    pub(super) conditions: Option<Vec<Condition>>,
    pub(super) start_time: Option<String>,
    pub(super) completion_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Condition {
    #[serde(rename = "type")]
    pub(super) ty: Option<String>,
    pub(super) status: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) message: Option<String>,
    pub(super) last_transition_time: Option<String>,
}

/// The CDEvent document; fields in the schemas' order, which serde keeps.
#[derive(Serialize)]
pub(super) struct Document<'a> {
    pub(super) context: Context<'a>,
    pub(super) subject: Subject<'a>,
}

#[derive(Serialize)]
pub(super) struct Context<'a> {
    pub(super) specversion: &'static str,
    pub(super) id: &'a str,
    pub(super) source: &'a str,
    #[serde(rename = "type")]
    pub(super) ty: &'static str,
    pub(super) timestamp: &'a str,
}

#[derive(Serialize)]
pub(super) struct Subject<'a> {
    pub(super) id: &'a str,
    pub(super) content: Content,
}

/// The content of all five events: each has the fields its schema allows and no other.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Content {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) pipeline_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) task_name: Option<String>,
    pub(super) uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) pipeline_run: Option<RunRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) errors: Option<String>,
}

#[derive(Serialize)]
pub(super) struct RunRef {
    pub(super) id: String,
}
