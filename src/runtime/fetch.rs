//! The HTTP machinery of the `fetch` instruction (DSUL §7.10, parsed and run
//! in `instructions/fetch.rs`): requests with reqwest, a size cap on responses,
//! body decoding, and a bound on the requests open at once to one host
//! (`fetch.max_connections_per_host`), so a fan-out cannot open thousands of
//! sockets. Every connection goes through the network guard
//! (`fetch.deny_networks`, `fetch.allow_networks`, see [`guard`]).

mod guard;

use super::{ErrorKind, ExecError, Inner};
use crate::config::Settings;
use crate::value::{Map, Value};
use base64::Engine;
use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An `InvalidInstructionError` of `fetch`.
pub(crate) fn invalid(message: impl Into<String>) -> ExecError {
    ExecError::new(
        ErrorKind::InvalidInstruction,
        format!("Invalid fetch instruction: {}", message.into()),
    )
}

/// A value as a header or query string value.
pub(crate) fn text(v: &Value) -> String {
    crate::expr::to_template_string(v)
}

/// The HTTP client of `fetch`, built once per runtime, and the guard it connects through.
pub(super) struct Client {
    http: reqwest::Client,
    guard: Arc<guard::NetworkGuard>,
}

impl Client {
    /// The client of these settings.
    pub(super) fn new(settings: &Settings) -> Result<Client, ExecError> {
        let guard = Arc::new(guard::NetworkGuard::new(settings));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.fetch.timeout_ms))
            .user_agent(settings.fetch.user_agent.clone())
            .pool_max_idle_per_host(settings.fetch.max_connections_per_host)
            .dns_resolver(Arc::new(guard::GuardedResolver(guard.clone())))
            .redirect(guard.clone().redirect_policy())
            .build()
            .map_err(|e| ExecError::new(ErrorKind::Internal, format!("HTTP client: {e}")))?;
        Ok(Client { http, guard })
    }
}

/// The requests open at once per host. A host's entry goes with its last
/// request, so the map only ever holds hosts with requests open or waiting.
#[derive(Default)]
pub(super) struct Hosts {
    open: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// One open request to a host; dropping it lets the next one in.
pub(super) struct HostPermit<'a> {
    hosts: &'a Hosts,
    key: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Hosts {
    /// Waits until fewer than `max` requests to `url`'s host are open, and
    /// returns the permit and how long that took.
    pub(super) async fn open(&self, url: &reqwest::Url, max: usize) -> (HostPermit<'_>, Duration) {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port_or_known_default().unwrap_or(0)
        );
        // Declared first so it drops last: a cancelled wait still forgets an idle host.
        let mut permit = HostPermit {
            hosts: self,
            key,
            permit: None,
        };
        let semaphore = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(permit.key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))))
            .clone();
        if let Ok(p) = semaphore.clone().try_acquire_owned() {
            permit.permit = Some(p);
            return (permit, Duration::ZERO);
        }
        let started = tokio::time::Instant::now();
        // Never closed: the semaphore lives as long as someone holds or awaits it.
        permit.permit = semaphore.acquire_owned().await.ok();
        (permit, started.elapsed())
    }
}

impl Drop for HostPermit<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut open = self.hosts.open.lock().unwrap_or_else(|p| p.into_inner());
        // Held only by the map: nobody has a request open nor waits for one.
        if open
            .get(&self.key)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            open.remove(&self.key);
        }
    }
}

/// An HTTP answer, read whole (up to `fetch.max_response_bytes`).
pub(crate) struct Response {
    /// The status code.
    pub(crate) status: u16,
    /// The headers: one value as a string, several as a list.
    pub(crate) headers: Map,
    /// The `content-type` header (empty when absent).
    pub(crate) content_type: String,
    /// The body.
    pub(crate) bytes: Vec<u8>,
}

impl Inner {
    /// Sends with up to two retries on a connection reset (as the reference does).
    pub(super) async fn send(
        &self,
        method: &reqwest::Method,
        url: &reqwest::Url,
        headers: &HeaderMap,
        body: Option<Vec<u8>>,
        multipart: Option<Vec<Part>>,
    ) -> Result<Response, ExecError> {
        let client = self.http()?;
        client
            .guard
            .check_url(url)
            .await
            .map_err(|refused| ExecError::new(ErrorKind::Fetch, refused.to_string()))?;
        let mut attempt = 0;
        loop {
            let mut req = client
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            if let Some(parts) = &multipart {
                req = req.multipart(to_form(parts)?);
            }
            match self.receive(req).await {
                Err(e) if attempt < 2 && is_reset(&e) => attempt += 1,
                Err(e) => {
                    if let Some(refused) = find_refused(&e) {
                        return Err(ExecError::new(ErrorKind::Fetch, refused.to_string()));
                    }
                    let what = if e.is_timeout() {
                        format!(
                            "timed out after {} ms (fetch.timeout_ms)",
                            self.settings.fetch.timeout_ms
                        )
                    } else {
                        error_chain(&e)
                    };
                    return Err(ExecError::new(
                        ErrorKind::Fetch,
                        format!("fetch {method} {url} failed: {what}"),
                    ));
                }
                Ok(r) => return r,
            }
        }
    }

    async fn receive(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Result<Response, ExecError>, reqwest::Error> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let mut headers = Map::new();
        for name in resp.headers().keys() {
            let values: Vec<Value> = resp
                .headers()
                .get_all(name)
                .iter()
                .map(|v| Value::str(String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect();
            let v = if values.len() == 1 {
                values.into_iter().next().unwrap_or_default()
            } else {
                Value::list(values)
            };
            headers.insert(name.as_str().to_string(), v);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let cap = self.settings.fetch.max_response_bytes;
        let mut bytes = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if bytes.len() + chunk.len() > cap {
                return Ok(Err(ExecError::new(
                    ErrorKind::Fetch,
                    format!("response is larger than {cap} bytes (fetch.max_response_bytes)"),
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Ok(Response {
            status,
            headers,
            content_type,
            bytes,
        }))
    }
}

fn is_reset(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        source = s.source();
    }
    false
}

/// The guard's refusal inside a reqwest error, wherever the connector wrapped it.
fn find_refused(e: &reqwest::Error) -> Option<&guard::Refused> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<guard::Refused>() {
            return Some(refused);
        }
        // An io::Error's source() skips the error it wraps.
        let wrapped = s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<guard::Refused>());
        if wrapped.is_some() {
            return wrapped;
        }
        source = s.source();
    }
    None
}

/// The error with its causes, since reqwest's own text hides the reason.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) fn is_event_stream(content_type: &str) -> bool {
    content_type
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
}

/// Splits a Server-Sent Events body into chunks `{chunk: {data: [...]}}`, each
/// `data:` line parsed as JSON when it is JSON (`[DONE]`-style markers stay text).
fn sse_chunks(text: &str) -> Value {
    let mut chunks = Vec::new();
    for block in text.replace("\r\n", "\n").split("\n\n") {
        let data: Vec<Value> = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| {
                let d = d.strip_prefix(' ').unwrap_or(d);
                serde_json::from_str::<serde_json::Value>(d)
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::str(d))
            })
            .collect();
        if data.is_empty() {
            continue;
        }
        let mut chunk = Map::new();
        chunk.insert("data".into(), Value::list(data));
        let mut item = Map::new();
        item.insert("chunk".into(), Value::object(chunk));
        chunks.push(Value::object(item));
    }
    Value::list(chunks)
}

/// Parses a body by content type: JSON, SSE chunks, text, or (other binary
/// types) text with invalid UTF-8 replaced.
pub(crate) fn decode_body(r: &Response) -> Value {
    let ct = r.content_type.to_ascii_lowercase();
    if is_event_stream(&ct) {
        return sse_chunks(&String::from_utf8_lossy(&r.bytes));
    }
    if ct.contains("application/json") || ct.contains("+json") {
        if let Ok(j) = serde_json::from_slice::<serde_json::Value>(&r.bytes) {
            return Value::from(j);
        }
    }
    Value::str(String::from_utf8_lossy(&r.bytes).into_owned())
}

/// One multipart field, validated before any request is sent.
pub(crate) struct Part {
    name: String,
    bytes: Vec<u8>,
    filename: Option<String>,
    content_type: Option<String>,
}

/// The multipart fields of `multipart`, checked.
pub(crate) fn form(parts: &[Value]) -> Result<Vec<Part>, ExecError> {
    parts
        .iter()
        .map(|p| {
            let m = p
                .as_object()
                .ok_or_else(|| invalid("each `multipart` entry must be a mapping"))?;
            let name = m
                .get("fieldname")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("a `multipart` entry needs `fieldname`"))?
                .to_string();
            let bytes = match m.get("value") {
                Some(Value::String(s)) => decode_maybe_base64(s),
                Some(Value::List(l)) if l.iter().all(|v| v.as_f64().is_some()) => l
                    .iter()
                    .filter_map(Value::as_f64)
                    .map(|n| n as u8)
                    .collect(),
                Some(other) => text(other).into_bytes(),
                None => Vec::new(),
            };
            Ok(Part {
                name,
                bytes,
                filename: m
                    .get("filename")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                content_type: m
                    .get("contentType")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        })
        .collect()
}

/// A value that looks like base64 is sent decoded (DSUL §7.10).
fn decode_maybe_base64(s: &str) -> Vec<u8> {
    if s != "true" && s != "false" && s.len().is_multiple_of(4) && !s.is_empty() {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(s) {
            return bytes;
        }
    }
    s.as_bytes().to_vec()
}

fn to_form(parts: &[Part]) -> Result<reqwest::multipart::Form, ExecError> {
    let mut form = reqwest::multipart::Form::new();
    for p in parts {
        let mut part = reqwest::multipart::Part::bytes(p.bytes.clone());
        if let Some(f) = &p.filename {
            part = part.file_name(f.clone());
        }
        if let Some(ct) = &p.content_type {
            part = part
                .mime_str(ct)
                .map_err(|_| invalid(format!("bad contentType `{ct}`")))?;
        }
        form = form.part(p.name.clone(), part);
    }
    Ok(form)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn requests_to_one_host_are_bounded_and_idle_hosts_forgotten() {
        let hosts = Hosts::default();
        let a = reqwest::Url::parse("http://a.test/x").unwrap();
        let a_again = reqwest::Url::parse("http://a.test:80/y?z").unwrap();
        let b = reqwest::Url::parse("http://b.test/").unwrap();
        let (first, _) = hosts.open(&a, 2).await;
        let (second, _) = hosts.open(&a_again, 2).await;
        // Another host has its own bound.
        let (other, waited) = hosts.open(&b, 2).await;
        assert_eq!(waited, Duration::ZERO);
        let mut third = Box::pin(hosts.open(&a, 2));
        assert!((&mut third).now_or_never().is_none());
        drop(first);
        let (third, _) = third.await;
        let mut cancelled = Box::pin(hosts.open(&a, 2));
        assert!((&mut cancelled).now_or_never().is_none());
        drop(cancelled);
        drop((second, third, other));
        assert!(hosts.open.lock().unwrap().is_empty());
    }
}
