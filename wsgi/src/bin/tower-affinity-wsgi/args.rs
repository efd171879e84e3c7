//! The command line, gunicorn's names where it has them.

use std::net::SocketAddr;
use std::time::Duration;

pub(crate) const USAGE: &str = "\
usage: tower-affinity-wsgi MODULE:CALLABLE [options]

Serves a WSGI application (PEP 3333) over HTTP/1.1 and HTTP/2 (h2c).

options:
  -b, --bind HOST:PORT            where to listen [127.0.0.1:8000]
  -w, --workers N                 worker threads always running [the number of cores]
      --max-workers M             threads at most, spares included, while workers block [64]
      --max-streams-per-worker N  responses one worker serves at once [256]; 1 for apps
                                  whose generators block inside next()
      --url-scheme SCHEME         wsgi.url_scheme [http]; https behind a TLS proxy
      --max-request-body BYTES    the largest request body read [16777216]
      --graceful-timeout SECS     on SIGTERM or Ctrl-C, how long requests in flight get [30]
  -h, --help                      this text

The current directory is put first on sys.path, and VIRTUAL_ENV's
site-packages before the interpreter's own, as gunicorn does.";

#[derive(Debug)]
pub(crate) struct Args {
    pub(crate) app: String,
    pub(crate) bind: SocketAddr,
    pub(crate) workers: Option<usize>,
    pub(crate) max_workers: Option<usize>,
    pub(crate) max_streams_per_worker: Option<usize>,
    pub(crate) url_scheme: Option<String>,
    pub(crate) max_request_body: Option<usize>,
    pub(crate) graceful_timeout: Duration,
}

/// What the command line asks for: `Ok(None)` for `--help`.
pub(crate) fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut app = None;
    let mut parsed = Args {
        app: String::new(),
        bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
        workers: None,
        max_workers: None,
        max_streams_per_worker: None,
        url_scheme: None,
        max_request_body: None,
        graceful_timeout: Duration::from_secs(30),
    };
    while let Some(arg) = args.next() {
        // `--name=value` or `--name value`.
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => {
                (name.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "-b" | "--bind" => {
                let bind = value()?;
                parsed.bind = bind.parse().map_err(|_| {
                    format!("--bind {bind}: not HOST:PORT (an IP address and a port)")
                })?;
            }
            "-w" | "--workers" => parsed.workers = Some(number(&name, &value()?)?),
            "--max-workers" => parsed.max_workers = Some(number(&name, &value()?)?),
            "--max-streams-per-worker" => {
                parsed.max_streams_per_worker = Some(number(&name, &value()?)?)
            }
            "--url-scheme" => parsed.url_scheme = Some(value()?),
            "--max-request-body" => parsed.max_request_body = Some(number(&name, &value()?)?),
            "--graceful-timeout" => {
                let secs: f64 = value()?
                    .parse()
                    .map_err(|_| format!("{name}: not a number of seconds"))?;
                parsed.graceful_timeout = Duration::try_from_secs_f64(secs)
                    .map_err(|_| format!("{name}: not a number of seconds"))?;
            }
            _ if name.starts_with('-') => return Err(format!("unknown option {name}")),
            _ if app.is_none() => app = Some(arg),
            _ => return Err(format!("one application only (got {arg} too)")),
        }
    }
    parsed.app = app.ok_or("MODULE:CALLABLE is missing")?;
    Ok(Some(parsed))
}

fn number(name: &str, value: &str) -> Result<usize, String> {
    value
        .parse()
        .map_err(|_| format!("{name} {value}: not a whole number"))
}
