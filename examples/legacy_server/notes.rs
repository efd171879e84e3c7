//! One SQLite writer: `POST /notes` goes to one worker thread, by a
//! constant affinity key, while reads go to whichever worker has room.
//!
//! SQLite lets one connection write at a time. A pool of many connections
//! that all write gets `SQLITE_BUSY` ("database is locked") under load: a
//! transaction that read before it writes cannot wait for the lock
//! (`SQLITE_BUSY_SNAPSHOT`, whatever the busy timeout), and the others wait
//! out their timeout. Serialising every request through a pool of one
//! connection fixes that and loses the concurrent reads. Here instead
//! every write carries the key [`WRITER`], so the layer sends it to one
//! worker, through that worker's own queue, in order; only that worker
//! ever opens a writable connection (on its first write). Reads carry no
//! key and spread over every worker, each with its read-only connection;
//! in WAL mode they never block the writer, nor it them.

use std::cell::RefCell;
use std::io::Read as _;
use std::time::Duration;

use http::request::Parts;
use http::{Method, StatusCode};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tower_affinity::blocking::BodyReader;

use super::{db_path, json, reply, Handled, Req, Worker, TEXT};

/// The affinity key of every write: one key, so one worker.
pub const WRITER: &str = "sqlite-writer";

/// The longest note `POST /notes` takes.
const NOTE_LIMIT: usize = 64 * 1024;

/// How long the writer waits for another process's write (several
/// processes may share the file behind a load balancer, see `deploy/`).
/// Within this process it never waits: it is the only writer.
const OTHER_PROCESSES: Duration = Duration::from_secs(5);

/// The layer's affinity key: [`WRITER`] for a write (anything but `GET`
/// and `HEAD`), else the `x-session` header, if any.
pub fn key(head: &Parts) -> Option<Vec<u8>> {
    if !matches!(head.method, Method::GET | Method::HEAD) {
        return Some(WRITER.as_bytes().to_vec());
    }
    let session = head.headers.get("x-session")?;
    Some(session.as_bytes().to_vec())
}

/// The table of notes, made by `seed` (idempotent).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS notes (
     author TEXT    NOT NULL,
     seq    INTEGER NOT NULL,
     text   TEXT    NOT NULL,
     PRIMARY KEY (author, seq)
 );";

/// The writer's slot on each worker: opened on the first write, so only
/// the writer's worker ever holds it.
#[derive(Default)]
pub(super) struct Writer(RefCell<Option<Connection>>);

/// Appends a note as its author's next `seq`, and returns that `seq`: a
/// read, then a write, in one deferred transaction, as ordinary code
/// writes it. On one connection at a time this never fails; on many, a
/// transaction whose read another commit made stale gets `SQLITE_BUSY`.
pub fn append(db: &mut Connection, author: &str, text: &str) -> rusqlite::Result<i64> {
    let tx = db.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let seq: i64 = tx.query_row(
        "SELECT coalesce(max(seq), 0) + 1 FROM notes WHERE author = ?1",
        [author],
        |row| row.get(0),
    )?;
    tx.execute(
        "INSERT INTO notes (author, seq, text) VALUES (?1, ?2, ?3)",
        rusqlite::params![author, seq, text],
    )?;
    tx.commit()?;
    Ok(seq)
}

/// A writable connection, as the writer opens it.
pub fn open_writer() -> rusqlite::Result<Connection> {
    let db = Connection::open_with_flags(
        db_path(),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    db.busy_timeout(OTHER_PROCESSES)?;
    // WAL's usual setting: durable at checkpoints, not at every commit.
    db.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(db)
}

/// `POST /notes?author=NAME` with the note as its body: appends it and
/// answers `201` with its `seq`. Runs on the writer's worker only.
pub(super) fn post(worker: &Worker, req: Req) -> Handled {
    let Some(author) = author(&req) else {
        return Ok(reply(StatusCode::BAD_REQUEST, TEXT, "send ?author=NAME\n"));
    };
    let mut text = String::new();
    if BodyReader::new(req.into_body())
        .limit(NOTE_LIMIT)
        .read_to_string(&mut text)
        .is_err()
    {
        let refused = format!("a note is UTF-8 text of at most {NOTE_LIMIT} bytes\n");
        return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, TEXT, refused));
    }
    let mut slot = worker.writer.0.borrow_mut();
    let db = match slot.as_mut() {
        Some(db) => db,
        None => slot.insert(open_writer()?),
    };
    let seq = append(db, &author, &text)?;
    let mut response = json(&serde_json::json!({ "author": author, "seq": seq }))?;
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// `GET /notes?author=NAME`: how many notes the author has, read on any
/// worker from its read-only connection.
pub(super) fn count(worker: &Worker, req: Req) -> Handled {
    let Some(author) = author(&req) else {
        return Ok(reply(StatusCode::BAD_REQUEST, TEXT, "send ?author=NAME\n"));
    };
    let notes: i64 = worker.db.query_row(
        "SELECT count(*) FROM notes WHERE author = ?1",
        [&author],
        |row| row.get(0),
    )?;
    json(&serde_json::json!({ "author": author, "notes": notes }))
}

/// The `author` query parameter (letters, digits, `-` and `_` only: the
/// demo does no percent-decoding).
fn author(req: &Req) -> Option<String> {
    let query = req.uri().query()?;
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("author="))?;
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    (!value.is_empty() && value.chars().all(valid)).then(|| value.to_owned())
}
