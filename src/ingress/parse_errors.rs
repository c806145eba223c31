//! hyper answers a request head it cannot parse (a malformed or duplicate
//! `Content-Length`, `Transfer-Encoding: identity`, a NUL byte in a header, too many or
//! too large headers) itself, with an empty body. This wrapper around a connection's
//! I/O gives those answers a problem+json body, as every other error of the ingress
//! has: it recognises hyper's automatic head (a 4xx with `content-length: 0`, which the
//! ingress's own 4xx answers never have) and writes a complete answer in its place.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's I/O whose writes of hyper's automatic error heads are rewritten.
pub struct WithProblems<T> {
    inner: T,
    /// A rewritten answer being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> WithProblems<T> {
    pub fn new(inner: T) -> Self {
        WithProblems {
            inner,
            pending: None,
        }
    }
}

/// The problem+json answer that replaces `head`, when `head` is exactly one of hyper's
/// automatic error heads.
pub fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    // Most writes are 202s: they are passed over on their first bytes.
    if !head.starts_with(b"HTTP/1.1 4") || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if end != head.len() {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let lower = text.to_ascii_lowercase();
    if !lower.contains("\r\ncontent-length: 0\r\n") || lower.contains("\r\ncontent-type:") {
        return None;
    }
    let status: u16 = text.get(9..12)?.parse().ok()?;
    let (title, detail) = match status {
        431 => (
            "Request Header Fields Too Large",
            "the request head is over 64 KiB or has more than 100 headers",
        ),
        414 => ("URI Too Long", "the request target is too long"),
        _ => (
            "Bad Request",
            "the request head is not valid HTTP/1.1: a malformed, negative, signed or conflicting Content-Length, an unsupported Transfer-Encoding, a control byte in a header, or an invalid method, target or version",
        ),
    };
    let body = serde_json::to_vec(&serde_json::json!({
        "title": title,
        "status": status,
        "detail": detail,
    }))
    .ok()?;
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    for line in text[..end - 4].split("\r\n") {
        if line.to_ascii_lowercase().starts_with("content-length:") {
            out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
            out.extend_from_slice(b"content-type: application/problem+json\r\n");
        } else {
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Some(out)
}

impl<T: AsyncRead + Unpin> AsyncRead for WithProblems<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WithProblems<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match rewrite(buf) {
                Some(answer) => this.pending = Some((answer, 0)),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // hyper offers the same bytes again until they are taken: the answer that
        // replaces them is written whole first.
        while let Some((answer, written)) = &mut this.pending {
            if *written == answer.len() {
                this.pending = None;
                return Poll::Ready(Ok(buf.len()));
            }
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    // Not vectored: hyper then writes a head in one buffer, where it can be recognised.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_automatic_heads_are_rewritten() {
        let auto = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 18:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(auto).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-type: application/problem+json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Wed"));
        let p: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(p["status"], 400);
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(rewrite(big).unwrap())
            .unwrap()
            .contains("100 headers"));
        for other in [
            &b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 202",
        ] {
            assert_eq!(rewrite(other), None, "{}", String::from_utf8_lossy(other));
        }
    }
}
