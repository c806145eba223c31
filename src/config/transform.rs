//! A sink's `transform` in a subscription file: CEL (`data`, `attributes`,
//! `contentType`, and the `values` they read) or a `preset`, compiled and checked here so that `check` reports every
//! mistake with its file, line and field.

use std::sync::Arc;

use super::subscriptions::{attribute_name, fields, get, SinkFormat};
use super::yaml::{Node, Value};
use super::Validator;
use crate::event::validate::check_media_type;
use crate::event::REQUIRED;
use crate::expr::filter::CelFilter;
use crate::expr::transform::tekton;
use crate::expr::transform::{Named, Preset, Shape, Transform};

const PRESETS: &[&str] = &["tekton-to-cdevents"];

/// Reads `node` (at `path`, a sink's `transform`) for a sink sent in `format`.
pub(super) fn transform(
    v: &mut Validator,
    node: &Node,
    path: &str,
    format: SinkFormat,
) -> Option<Arc<Transform>> {
    let f = fields(
        v,
        node,
        path,
        &[
            "data",
            "attributes",
            "contentType",
            "values",
            "preset",
            "dashboardUrl",
        ],
    )?;
    if let Some(p) = get(&f, "preset") {
        let name = v.string(p, &format!("{path}.preset"))?;
        if !PRESETS.contains(&name.as_str()) {
            v.error(
                p,
                &format!("{path}.preset"),
                format!(
                    "'{name}' is not a preset; the presets are: {}",
                    PRESETS.join(", ")
                ),
            );
            return None;
        }
        for key in ["data", "attributes", "contentType", "values"] {
            if let Some(n) = get(&f, key) {
                v.error(
                    n,
                    &format!("{path}.{key}"),
                    "a preset makes the whole event; it does not combine with data, attributes, contentType or values",
                );
            }
        }
        let dashboard_url = match get(&f, "dashboardUrl") {
            None => None,
            Some(n) => {
                let text = v.string(n, &format!("{path}.dashboardUrl"))?;
                match text.parse::<http::Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http" | "https"))
                            && u.authority().is_some() =>
                    {
                        Some(text.trim_end_matches('/').to_string())
                    }
                    _ => {
                        v.error(
                            n,
                            &format!("{path}.dashboardUrl"),
                            format!("'{text}' is not an absolute http:// or https:// URI (the Tekton Dashboard's address)"),
                        );
                        return None;
                    }
                }
            }
        };
        return Some(Arc::new(Transform::preset(Preset::TektonToCdevents(
            tekton::Options { dashboard_url },
        ))));
    }
    if let Some(n) = get(&f, "dashboardUrl") {
        v.error(
            n,
            &format!("{path}.dashboardUrl"),
            "belongs to the tekton-to-cdevents preset; without a preset it means nothing",
        );
    }
    let mut shape = Shape::default();
    let errors_before = v.errors.len();
    if let Some(n) = get(&f, "values") {
        shape.values = values(v, n, &format!("{path}.values"));
    }
    if let Some(n) = get(&f, "data") {
        shape.data = expression(v, n, &format!("{path}.data"));
    }
    if let Some(n) = get(&f, "attributes") {
        shape.attributes = attributes(v, n, &format!("{path}.attributes"));
        if format == SinkFormat::Plain && !shape.attributes.is_empty() {
            let line = f
                .iter()
                .find(|(k, _, _)| *k == "attributes")
                .map_or(n.line, |e| e.1);
            v.error_at(
                line,
                &format!("{path}.attributes"),
                "a format: plain sink is sent the body and its Content-Type alone, without attributes; use format: binary or structured to send them",
            );
        }
    }
    if let Some(n) = get(&f, "contentType") {
        if let Some(text) = v.string(n, &format!("{path}.contentType")) {
            match check_media_type(&text) {
                Ok(()) => shape.content_type = Some(text),
                Err(e) => v.error(n, &format!("{path}.contentType"), e),
            }
        }
    }
    if v.errors.len() > errors_before {
        return None;
    }
    if shape.data.is_none() && shape.attributes.is_empty() && shape.content_type.is_none() {
        v.error(
            node,
            path,
            "is empty; a transform has data, attributes or contentType, or is a preset",
        );
        return None;
    }
    Some(Arc::new(Transform::cel(shape)))
}

fn expression(v: &mut Validator, node: &Node, path: &str) -> Option<CelFilter> {
    let src = v.string(node, path)?;
    match CelFilter::compile(&src) {
        Ok(c) => Some(c),
        Err(e) => {
            v.error(
                node,
                path,
                format!("CEL does not compile at column {}: {}", e.column, e.message),
            );
            None
        }
    }
}

/// Attribute name → CEL expression (or `null`, which removes the attribute).
fn attributes(v: &mut Validator, node: &Node, path: &str) -> Vec<(String, Option<CelFilter>)> {
    let Value::Map(entries) = &node.value else {
        v.error(
            node,
            path,
            format!(
                "must be a mapping of attribute names to CEL expressions, not {}",
                node.kind()
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, line, value) in entries {
        let here = format!("{path}.{name}");
        if !attribute_name(v, *line, &here, name) {
            continue;
        }
        match name.as_str() {
            "specversion" => {
                v.error_at(
                    *line,
                    &here,
                    "cannot be changed: Switchyard sends CloudEvents 1.0",
                );
                continue;
            }
            "datacontenttype" => {
                v.error_at(
                    *line,
                    &here,
                    "is the body's media type: set it with contentType",
                );
                continue;
            }
            _ => {}
        }
        let removed = matches!(value.value, Value::Null)
            || matches!(&value.value, Value::Str(s) if s.trim() == "null");
        if removed {
            if REQUIRED.contains(&name.as_str()) {
                v.error_at(
                    *line,
                    &here,
                    "cannot be removed: every CloudEvent has it (id, source, specversion, type)",
                );
            } else {
                out.push((name.clone(), None));
            }
            continue;
        }
        if let Some(program) = expression(v, value, &here) {
            out.push((name.clone(), Some(program)));
        }
    }
    out
}

/// `values`: name → a string or a secret (`valueFrom`), read as `values.<name>`.
fn values(v: &mut Validator, node: &Node, path: &str) -> Vec<Named> {
    let Value::Map(entries) = &node.value else {
        v.error(
            node,
            path,
            format!("must be a mapping of names to values, not {}", node.kind()),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, line, value) in entries {
        let here = format!("{path}.{name}");
        let identifier = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            v.error_at(
                *line,
                &here,
                format!("'{name}' is not a name CEL can read as values.{name}: letters, digits and _, not starting with a digit"),
            );
            continue;
        }
        let secret = matches!(value.value, Value::Map(_));
        if let Some(text) = v.secret(value, &here) {
            out.push(Named {
                name: name.clone(),
                value: text,
                secret,
            });
        }
    }
    out
}
