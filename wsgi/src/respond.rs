//! One request, on its worker: the application called and iterated up to
//! its head.
//!
//! PEP 3333 lets the application call `start_response` late (from its
//! first iteration) and change its mind (`exc_info`) until the first
//! non-empty chunk, so the head is ready only once a `write()` or a
//! non-empty item came, or the iterable ended. Anything that fails before
//! that is a `500` whose body says nothing of the error (the traceback
//! goes to the log); after it, the body ends with an error.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use pyo3::prelude::*;
use tower_affinity::blocking::BodyReader;

use crate::app::App;
use crate::body::{Stream, WsgiBody};
use crate::builder::Config;
use crate::input::Input;
use crate::iterable::Iterable;
use crate::log::{self, ErrorStream};
use crate::start_response::{SharedHead, StartResponse};
use crate::{environ, BoxError};

/// Headers that belong to one connection, which PEP 3333 forbids an
/// application to set: hyper writes its own.
const HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

pub(crate) fn plain(status: StatusCode, text: &'static str) -> Response<WsgiBody> {
    let mut response = Response::new(WsgiBody::whole(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn internal_error() -> Response<WsgiBody> {
    plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
}

pub(crate) fn respond<B>(
    py: Python<'_>,
    app: &App,
    config: &Config,
    request: Request<B>,
) -> Response<WsgiBody>
where
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    let app = match app.get(py) {
        Ok(app) => app,
        Err(_) => return internal_error(),
    };
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > config.max_request_body as u64) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n");
    }
    let head = SharedHead::new(config.write_buffer);
    let mut iterable = None;
    let started = (|| {
        let input = Input::new(Box::new(
            BodyReader::new(body).limit(config.max_request_body),
        ));
        let worker = parts
            .extensions
            .get::<tower_affinity::WorkerId>()
            .map(|id| id.index());
        let environ = environ::build(
            py,
            &parts,
            config,
            Bound::new(py, input)?.into_any(),
            Bound::new(py, ErrorStream::new())?.into_any(),
            worker,
        )?;
        let start_response = Bound::new(py, StartResponse::new(head.clone()))?;
        let result = app.call1((environ, start_response))?;
        let iterable = iterable.insert(Iterable::new(result));
        first_chunk(py, iterable, &head, config)
    })();
    let (first, ended) = match started {
        Ok(started) => started,
        Err(error) => {
            log::traceback(
                py,
                "the WSGI application, before its response started",
                &error,
            );
            if let Some(iterable) = &mut iterable {
                iterable.close_logged(py);
            }
            return internal_error();
        }
    };
    // Set by the application's return, before the first chunk was asked.
    let Some(mut iterable) = iterable else {
        return internal_error();
    };
    match build(&head, parts.method == Method::HEAD) {
        Ok(response) => finish(py, response, iterable, head, first, ended),
        Err(message) => {
            log::line(&format!("the WSGI application's response: {message}"));
            iterable.close_logged(py);
            internal_error()
        }
    }
}

/// Iterates until the head is ready: `(first chunk, whether the iterable
/// ended)`.
fn first_chunk(
    py: Python<'_>,
    iterable: &mut Iterable,
    head: &SharedHead,
    config: &Config,
) -> PyResult<(Bytes, bool)> {
    if !head.lock().written.is_empty() {
        return Ok((Bytes::new(), false));
    }
    if let Some(whole) = iterable.whole(py, config.single_frame) {
        iterable.close(py)?;
        return Ok((whole, true));
    }
    loop {
        match iterable.next(py)? {
            None => {
                iterable.close(py)?;
                return Ok((Bytes::new(), true));
            }
            Some(chunk) if chunk.is_empty() && head.lock().written.is_empty() => {}
            Some(chunk) => return Ok((chunk, false)),
        }
    }
}

/// The head the application gave, checked; the headers now count as sent.
fn build(head: &SharedHead, is_head: bool) -> Result<(Response<()>, Option<u64>), String> {
    let mut head = head.lock();
    head.sent = true;
    let status = head
        .status
        .as_deref()
        .ok_or("start_response() was never called")?;
    let code = status
        .get(..3)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|_| status.len() == 3 || status.as_bytes()[3] == b' ')
        .ok_or_else(|| format!("bad status {status:?}"))?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (name, value) in &head.headers {
        let bytes = |s: &str| s.chars().map(|c| c as u8).collect::<Vec<u8>>();
        let name = HeaderName::from_bytes(&bytes(name))
            .map_err(|_| format!("bad header name {name:?}"))?;
        let value = HeaderValue::from_bytes(&bytes(value))
            .map_err(|_| format!("bad value for header {name}"))?;
        if HOP_BY_HOP.contains(&name) {
            return Err(format!(
                "hop-by-hop header {name} (PEP 3333 leaves it to the server)"
            ));
        }
        headers.append(name, value);
    }
    let length = match headers.get(header::CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("a Content-Length that is not a number")?,
        ),
    };
    let mut response = Response::new(());
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    // A HEAD response keeps the length of the GET it stands for, with no
    // body: nothing to hold the body to.
    Ok((response, length.filter(|_| !is_head)))
}

fn finish(
    py: Python<'_>,
    (response, length): (Response<()>, Option<u64>),
    mut iterable: Iterable,
    head: SharedHead,
    first: Bytes,
    ended: bool,
) -> Response<WsgiBody> {
    let mut ready = head.lock().take_all_written();
    if !first.is_empty() {
        ready.push_back(first);
    }
    let total: usize = ready.iter().map(Bytes::len).sum();
    // What is in hand is all that `Content-Length` promised: the response
    // is whole without asking the iterable for its end.
    if !ended && length == Some(total as u64) {
        iterable.close_logged(py);
    }
    if ended || iterable.is_closed() {
        // All of it is here: one frame, sent with the head.
        if length.is_some_and(|length| length != total as u64) {
            log::line(&format!(
                "the WSGI application's body has {total} bytes, its Content-Length says {}",
                length.unwrap_or(0)
            ));
            return internal_error();
        }
        let whole = match ready.len() {
            0 => Bytes::new(),
            1 => ready.pop_front().unwrap_or_default(),
            _ => ready
                .iter()
                .fold(BytesMut::with_capacity(total), |mut all, chunk| {
                    all.extend_from_slice(chunk);
                    all
                })
                .freeze(),
        };
        return response.map(|()| WsgiBody::whole(whole));
    }
    response.map(|()| {
        WsgiBody::stream(Stream {
            iterable,
            head,
            ready,
            remaining: length,
        })
    })
}
