//! `fetch: {url, method, headers, query, body, ...}` (DSUL §7.10): an HTTP
//! request; 4xx/5xx answers are results (and `runtime.fetch.failed` events),
//! not errors. The client, host bounds and body decoding live in `runtime::fetch`.

use super::{Instruction, eval, mapping, store_output, Instr};
use crate::dsl::{Compiler, Node, Span};
use crate::limits::LimitKind;
use crate::runtime::exec::{Exec, Flow};
use crate::runtime::fetch::{decode_body, form, invalid, is_event_stream, text};
use crate::runtime::{ErrorKind, ExecError};
use crate::value::{Map, Value};
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use std::future::Future;

/// Native event sent when a fetch gets a 4xx/5xx answer.
const FETCH_FAILED: &str = "runtime.fetch.failed";

/// The fields `fetch` takes, for diagnostics (in [`Args`] order).
const FIELDS: &[&str] = &[
    "url",
    "method",
    "headers",
    "query",
    "body",
    "multipart",
    "emitErrors",
    "outputMode",
    "stream",
    "prismeaiApiKey",
    "output",
];

/// The arguments of a `fetch`: compiled nodes in the instruction, values once
/// interpolated.
#[derive(Debug, Default)]
struct Args<T> {
    url: T,
    method: T,
    headers: T,
    query: T,
    body: T,
    multipart: T,
    emit_errors: T,
    output_mode: T,
    stream: T,
    output: T,
}

impl<T> Args<T> {
    /// Where the field `name` goes; `None` for a field sluice accepts and
    /// ignores (`prismeaiApiKey`: Prisme.ai's own API is out of scope).
    fn slot(&mut self, name: &str) -> Result<Option<&mut T>, ()> {
        Ok(Some(match name {
            "url" => &mut self.url,
            "method" => &mut self.method,
            "headers" => &mut self.headers,
            "query" => &mut self.query,
            "body" => &mut self.body,
            "multipart" => &mut self.multipart,
            "emitErrors" => &mut self.emit_errors,
            "outputMode" => &mut self.output_mode,
            "stream" => &mut self.stream,
            "output" => &mut self.output,
            "prismeaiApiKey" => return Ok(None),
            _ => return Err(()),
        }))
    }

    fn try_map<U, E>(&self, f: impl Fn(&T) -> Result<U, E>) -> Result<Args<U>, E> {
        Ok(Args {
            url: f(&self.url)?,
            method: f(&self.method)?,
            headers: f(&self.headers)?,
            query: f(&self.query)?,
            body: f(&self.body)?,
            multipart: f(&self.multipart)?,
            emit_errors: f(&self.emit_errors)?,
            output_mode: f(&self.output_mode)?,
            stream: f(&self.stream)?,
            output: f(&self.output)?,
        })
    }
}

/// A compiled `fetch` (boxed: a fetch is rare and large, and every
/// instruction takes the room of the largest).
#[derive(Debug)]
pub(crate) struct Fetch(Box<Args<Option<Node>>>);

/// The interpolated arguments of one request.
type Request = Args<Value>;

impl Instr for Fetch {
    const NAME: &'static str = "fetch";

    fn compile(value: &Value, _: &Span, cx: &mut Compiler<'_, Instruction>) -> Result<Fetch, String> {
        let m = mapping(value, "fetch", "`url`")?;
        let mut args: Box<Args<Option<Node>>> = Box::default();
        for (field, v) in m.iter() {
            match args.slot(field) {
                Ok(Some(slot)) => *slot = Some(cx.node(v)),
                Ok(None) => {}
                Err(()) => cx.unknown_field(field, "fetch", FIELDS),
            }
        }
        Ok(Fetch(args))
    }

    fn execute<'a>(
        &'a self,
        x: &'a Exec<'a>,
    ) -> Result<impl Future<Output = Result<Flow, ExecError>> + Send + 'a, ExecError> {
        let request = self.0.try_map(|node| eval(node, x))?;
        Ok(Box::pin(async move {
            let response = fetch(x, &request).await?;
            store_output(x, &request.output, response)?;
            Ok(Flow::Continue)
        }))
    }
}

/// Sends the request and returns what `output` receives.
async fn fetch(x: &Exec<'_>, request: &Request) -> Result<Value, ExecError> {
    let url = match &request.url {
        Value::String(s) if !s.is_empty() => s.to_string(),
        _ => return Err(invalid("`url` is required")),
    };
    let method_name = request
        .method
        .as_str()
        .unwrap_or("get")
        .to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method_name.as_bytes())
        .map_err(|_| invalid(format!("unknown method `{method_name}`")))?;
    let mut url =
        reqwest::Url::parse(&url).map_err(|e| invalid(format!("bad url `{url}`: {e}")))?;
    if let Value::Object(query) = &request.query {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in query.iter() {
            match v {
                Value::List(items) => {
                    for item in items.iter() {
                        pairs.append_pair(k, &text(item));
                    }
                }
                Value::Undefined => {}
                other => {
                    pairs.append_pair(k, &text(other));
                }
            }
        }
    }
    let mut headers = HeaderMap::new();
    if let Value::Object(h) = &request.headers {
        for (k, v) in h.iter() {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| invalid(format!("bad header name `{k}`")))?;
            let value = HeaderValue::from_str(&text(v))
                .map_err(|_| invalid(format!("bad value for header `{k}`")))?;
            headers.insert(name, value);
        }
    }
    let correlation = HeaderValue::from_str(x.correlation_id()).ok();
    if let Some(c) = correlation {
        headers.insert("x-correlation-id", c);
    }
    if let Ok(ws) = HeaderValue::from_str(x.workspace_id()) {
        headers.insert("x-prismeai-workspace-id", ws);
    }
    let body = Some(&request.body).filter(|b| !b.is_undefined());
    let body_bytes = match body {
        Some(b) if method != reqwest::Method::GET => {
            let ct = headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase);
            if ct.is_none() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Some(match b {
                Value::Object(o)
                    if ct
                        .as_deref()
                        .is_some_and(|c| c.contains("application/x-www-form-urlencoded")) =>
                {
                    let mut form = form_urlencoded::Serializer::new(String::new());
                    for (k, v) in o.iter() {
                        form.append_pair(k, &text(v));
                    }
                    form.finish().into_bytes()
                }
                Value::String(s) => s.as_bytes().to_vec(),
                other => other.to_json_string().into_bytes(),
            })
        }
        _ => None,
    };
    let multipart = match &request.multipart {
        Value::List(parts) if method != reqwest::Method::GET => Some(form(parts)?),
        _ => None,
    };

    x.take(LimitKind::Fetchs, 1).await;
    let response = x
        .http(&method, &url, &headers, body_bytes, multipart)
        .await?;

    let emit_errors = !matches!(&request.emit_errors, Value::Bool(false));
    let body = decode_body(&response);
    if response.status >= 400 && emit_errors {
        let mut sent = Map::new();
        sent.insert("url".into(), Value::str(url.as_str()));
        sent.insert("method".into(), Value::str(method_name.as_str()));
        let mut resp = Map::new();
        resp.insert("status".into(), Value::Number(response.status as f64));
        resp.insert("body".into(), body.clone());
        resp.insert("headers".into(), Value::object(response.headers.clone()));
        let mut payload = Map::new();
        payload.insert("request".into(), Value::object(sent));
        payload.insert("response".into(), Value::object(resp));
        x.native_event(FETCH_FAILED, Value::object(payload))
            .await?;
    }
    let detailed = |body: Value, headers: Map| {
        let mut d = Map::new();
        d.insert("headers".into(), Value::object(headers));
        d.insert("status".into(), Value::Number(response.status as f64));
        d.insert("body".into(), body);
        Value::object(d)
    };
    if let Value::List(chunks) = &body {
        if is_event_stream(&response.content_type) {
            // An SSE answer is a detailed response whose body lists the chunks
            // (`repeat on:` walks them); with `stream.event` each is also emitted.
            if let Value::Object(stream) = &request.stream {
                emit_chunks(x, stream, chunks).await?;
            }
            return Ok(detailed(body.clone(), response.headers.clone()));
        }
    }
    Ok(match request.output_mode.as_str() {
        Some("detailed_response") => detailed(body, response.headers.clone()),
        Some("data_url") => Value::str(format!(
            "data:{};base64,{}",
            response.content_type,
            base64::engine::general_purpose::STANDARD.encode(&response.bytes)
        )),
        _ => body,
    })
}

/// Emits one `stream.event` per SSE chunk: `{index, chunk, additionalPayload}`,
/// plus `concatenated` (the text at `stream.concatenate.path` of every chunk
/// so far) when asked.
async fn emit_chunks(x: &Exec<'_>, stream: &Map, chunks: &[Value]) -> Result<(), ExecError> {
    let Some(event) = stream.get("event").and_then(Value::as_str) else {
        return Ok(());
    };
    // The name is the tenant's, even though the chunks go out as native events.
    crate::bus::check_event_type(event)
        .map_err(|e| ExecError::new(ErrorKind::InvalidEvent, e.to_string()))?;
    let concat_path = stream
        .get("concatenate")
        .and_then(Value::as_object)
        .and_then(|c| c.get("path"))
        .and_then(Value::as_str)
        .and_then(|p| crate::expr::parse_variable_name(p).ok());
    let mut concatenated = String::new();
    for (index, chunk) in chunks.iter().enumerate() {
        let chunk = chunk
            .as_object()
            .and_then(|c| c.get("chunk"))
            .cloned()
            .unwrap_or_default();
        let mut payload = Map::new();
        payload.insert("index".into(), Value::Number(index as f64));
        if let Some(path) = &concat_path {
            let data = chunk.as_object().and_then(|c| c.get("data"));
            for item in data.and_then(Value::as_list).into_iter().flatten() {
                concatenated.push_str(&text(&crate::expr::get_path(item, path)));
            }
            let mut c = Map::new();
            c.insert("value".into(), Value::str(concatenated.as_str()));
            payload.insert("concatenated".into(), Value::object(c));
        }
        payload.insert("chunk".into(), chunk);
        if let Some(extra) = stream.get("payload") {
            payload.insert("additionalPayload".into(), extra.clone());
        }
        x.take(LimitKind::Emits, 1).await;
        x.native_event(event, Value::object(payload)).await?;
    }
    Ok(())
}
