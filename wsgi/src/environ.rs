//! The PEP 3333 environ of one request.
//!
//! Strings are "native strings": the request's bytes, each byte one code
//! point (latin-1), as PEP 3333 asks, so an application can recover the
//! raw bytes with `.encode("latin-1")`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, OriginalUri};
use http::request::Parts;
use http::{header, HeaderMap, Version};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::builder::Config;

/// Bytes as a native string: one code point per byte.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// `%XX` sequences decoded to bytes (PATH_INFO is decoded, the query is
/// not, as CGI does).
fn percent_decode(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// SCRIPT_NAME and PATH_INFO, both still percent-encoded.
///
/// Under `Router::nest_service("/app", ..)` axum strips `/app` from the
/// path and keeps the path as the client sent it in [`OriginalUri`]: the
/// mount point is what the original path has before the inner one. A
/// configured `script_name` wins; without either, SCRIPT_NAME is empty.
fn split_path<'a>(parts: &'a Parts, config: &'a Config) -> (&'a str, &'a str) {
    let path = parts.uri.path();
    if let Some(script) = &config.script_name {
        let info = path.strip_prefix(script.as_str()).unwrap_or(path);
        return (script.as_str(), info);
    }
    let Some(OriginalUri(original)) = parts.extensions.get::<OriginalUri>() else {
        return ("", path);
    };
    let original = original.path();
    if let Some(script) = original.strip_suffix(path) {
        return (&original[..script.len()], path);
    }
    // `/app` nested at `/app`: the inner path is `/`, and the client asked
    // for the application's root without its slash.
    if path == "/" {
        return (original, "");
    }
    ("", path)
}

/// SERVER_NAME and SERVER_PORT, from `Host` (or the URI's authority).
fn server(parts: &Parts, scheme: &str) -> (String, String) {
    let default_port = if scheme == "https" { "443" } else { "80" };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    // `[::1]:8080`: the port follows the last colon after the bracket.
    let split = match host.rfind(':') {
        Some(at) if !host[at..].contains(']') => Some(at),
        _ => None,
    };
    match split {
        Some(at) => (host[..at].to_owned(), host[at + 1..].to_owned()),
        None => (host.to_owned(), default_port.to_owned()),
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Sets the `HTTP_*` variables, and CONTENT_TYPE and CONTENT_LENGTH.
///
/// Repeated headers join with `, ` (cookies with `; `). A header whose
/// name holds `_` is dropped, as gunicorn and nginx do: it would read the
/// same as its `-` twin, which a proxy in front may have checked.
fn headers(environ: &Bound<'_, PyDict>, map: &HeaderMap) -> PyResult<()> {
    for name in map.keys() {
        if name.as_str().contains('_') {
            continue;
        }
        let separator: &[u8] = if name == header::COOKIE { b"; " } else { b", " };
        let value = map
            .get_all(name)
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(separator);
        let key = match *name {
            header::CONTENT_TYPE => "CONTENT_TYPE".to_owned(),
            header::CONTENT_LENGTH => "CONTENT_LENGTH".to_owned(),
            _ => format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            ),
        };
        environ.set_item(key, latin1(&value))?;
    }
    Ok(())
}

/// The environ for `parts`, with `input` as `wsgi.input`.
pub(crate) fn build<'py>(
    py: Python<'py>,
    parts: &Parts,
    config: &Config,
    input: Bound<'py, PyAny>,
    errors: Bound<'py, PyAny>,
    worker: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let environ = PyDict::new(py);
    let scheme = parts
        .uri
        .scheme_str()
        .or(config.url_scheme.as_deref())
        .unwrap_or("http");
    let (script, info) = split_path(parts, config);
    environ.set_item("REQUEST_METHOD", parts.method.as_str())?;
    environ.set_item("SCRIPT_NAME", latin1(&percent_decode(script)))?;
    environ.set_item("PATH_INFO", latin1(&percent_decode(info)))?;
    environ.set_item("QUERY_STRING", parts.uri.query().unwrap_or(""))?;
    // PEP 3333 lists them as may-be-empty; wsgiref.validate wants them
    // present whenever the request has them, so only the headers set them.
    headers(&environ, &parts.headers)?;
    let (name, port) = server(parts, scheme);
    environ.set_item("SERVER_NAME", name)?;
    environ.set_item("SERVER_PORT", port)?;
    environ.set_item("SERVER_PROTOCOL", protocol(parts.version))?;
    environ.set_item(
        "SERVER_SOFTWARE",
        concat!("tower-affinity-wsgi/", env!("CARGO_PKG_VERSION")),
    )?;
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        environ.set_item("REMOTE_ADDR", peer.ip().to_string())?;
        environ.set_item("REMOTE_PORT", peer.port().to_string())?;
    }
    environ.set_item("wsgi.version", (1, 0))?;
    environ.set_item("wsgi.url_scheme", PyString::new(py, scheme))?;
    environ.set_item("wsgi.input", input)?;
    // The body ends where the client's does: reading to EOF is safe even
    // without CONTENT_LENGTH (the mod_wsgi and gunicorn extension).
    environ.set_item("wsgi.input_terminated", true)?;
    environ.set_item("wsgi.errors", errors)?;
    environ.set_item("wsgi.multithread", true)?;
    environ.set_item("wsgi.multiprocess", false)?;
    environ.set_item("wsgi.run_once", false)?;
    environ.set_item(
        "wsgi.file_wrapper",
        py.get_type::<crate::file_wrapper::FileWrapper>(),
    )?;
    environ.set_item("tower_affinity.worker", worker)?;
    Ok(environ)
}
