//! `application/problem+json` responses (RFC 9457) with Switchyard's extension members
//! `attribute` (the CloudEvents attribute at fault) and `index` (the batch position).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::event::EventError;

/// A problem to answer with.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(skip)]
    pub status: StatusCode,
    pub title: &'static str,
    #[serde(rename = "status")]
    code: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// The config key of the limit a request went over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    #[serde(skip)]
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            title,
            code: status.as_u16(),
            detail: detail.into(),
            attribute: None,
            index: None,
            limit: None,
            headers: Vec::new(),
        }
    }

    /// Names the config key of the limit the request went over.
    pub fn with_limit(mut self, key: &'static str) -> Self {
        self.limit = Some(key);
        self
    }

    /// Adds a response header (`Allow`, `Retry-After`, `WWW-Authenticate`).
    pub fn with_header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl From<EventError> for Problem {
    fn from(e: EventError) -> Self {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "Invalid CloudEvent", e.to_string());
        p.attribute = e.attribute;
        p.index = e.index.and_then(|i| u32::try_from(i).ok());
        p
    }
}
