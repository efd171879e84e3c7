//! The pump: moves a streamed response's frames from its inner body to its
//! channel, with backpressure, cancellation and the response deadline.
//!
//! Per frame it takes the channel's lock once to send (and learns whether
//! room is left), and once more only when it must wait: for room, or, while
//! the inner body is pending, for the reader to go. While the reader is
//! behind, small data frames merge into the last one waiting (see
//! [`Msg::merge`]), so a body of many small items costs a few large frames.
//!
//! A stream that never has to wait yields to its worker's other tasks at
//! the end of each turn: 16 frames queued, 1,024 polls, or 250 µs, whichever
//! comes first, so that another request on the worker waits about one
//! frame's time, not a thousand slow items' (guarantee 4).

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::{Duration, Instant as Clock};

use http_body::Body;
use tokio::time::Instant;

use crate::body::{FrameSender, Msg};
use crate::error::{BoxError, Elapsed};
use crate::pool::worker::load::Active;
use crate::pool::worker::park;
use crate::pool::worker::unwind::{drop_guarded, Guarded};
use crate::trace;

/// How many frames a stream queues before it yields to the worker's other
/// tasks even if its reader keeps up.
const FRAMES_PER_TURN: usize = 16;

/// How many times a stream polls its body before it yields, even if what
/// it produces merges into frames already queued: a body of many small
/// items yields per this many items, not per item (a yield costs the
/// worker a turn of its event loop).
const POLLS_PER_TURN: usize = 1024;

/// How long a stream's turn may run before it yields, whatever the counts:
/// a body of slow items (a cursor whose rows take a millisecond each) that
/// merge while the reader is behind would otherwise hold its worker for
/// up to `POLLS_PER_TURN` of them. A turn ends after the poll that passes
/// it, so another request waits at most this plus one frame's time.
const TIME_PER_TURN: Duration = Duration::from_micros(250);

/// How one streamed response is pumped.
#[derive(Clone, Copy)]
pub(super) struct Stream {
    pub(super) deadline: Option<Instant>,
    /// Merge data frames up to this many bytes while the reader is behind;
    /// 0: never.
    pub(super) merge: usize,
}

/// Streams the rest of a body, then records how it ended.
pub(super) async fn stream_body<B>(
    mut body: Pin<&mut Guarded<B>>,
    tx: FrameSender,
    stream: Stream,
    active: Active,
) where
    B: Body,
    B::Error: Into<BoxError>,
{
    // Yield once before producing more: the head and first frame are out,
    // and the worker's event loop and other streams get their turn before
    // this one fills its buffer.
    park::yield_now().await;
    match pump(body.as_mut(), &tx, stream, &active).await {
        Pumped::Done => trace::debug!("ended"),
        // The sender drops without an end marker: the reader gets a body
        // error, as for every stream a shutdown cuts.
        Pumped::Aborted => trace::debug!("cut by shutdown"),
        Pumped::Cancelled => trace::debug!("cancelled"),
        Pumped::Panicked => {
            trace::warning!("panicked");
            active.panicked();
        }
        Pumped::Elapsed => {
            trace::debug!("deadline elapsed");
            // Drop the inner body now, on this thread, and make room for
            // other requests; then tell the reader at once, in place of the
            // frames it has not read, so the stream holds nothing more.
            body.as_mut().clear();
            drop(active);
            if let Ok(left) = tx.close_with(Msg::Error(Elapsed::new().into())) {
                drop_guarded(left);
            }
        }
    }
}

/// How a pump ended.
enum Pumped {
    /// The body ended or failed, and the reader was told.
    Done,
    /// The reader went away.
    Cancelled,
    /// The body panicked (and the reader was told).
    Panicked,
    /// The deadline passed; the reader has not been told.
    Elapsed,
    /// `shutdown_timeout`'s deadline passed; the reader has not been told.
    Aborted,
}

/// Moves frames from the inner body to the channel until the body ends, it
/// fails, the reader goes away, the deadline passes, or a shutdown cuts it.
async fn pump<B>(
    mut body: Pin<&mut Guarded<B>>,
    tx: &FrameSender,
    stream: Stream,
    active: &Active,
) -> Pumped
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut elapsed = pin!(async {
        match stream.deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    });
    let mut turn = Turn::new();
    // Whether the last send left room: then there is no need to ask.
    let mut room = false;
    loop {
        // Checked here, not only by the event loop: a stream whose reader
        // keeps up never waits, and the local set polls the event loop only
        // once per 61 task polls, which for slow frames can be seconds.
        if active.aborting() {
            return Pumped::Aborted;
        }
        // Room first: a frame produced with nowhere to go would either block
        // the thread or grow memory.
        if !room {
            let ready = poll_fn(|cx| {
                if elapsed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(Pumped::Elapsed));
                }
                turn.waited(tx.poll_ready(cx).map_err(|_| Pumped::Cancelled))
            });
            if let Err(end) = ready.await {
                return end;
            }
        }
        let next = poll_fn(|cx| {
            if elapsed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Pumped::Elapsed));
            }
            match body.as_mut().poll_frame(cx) {
                Poll::Ready(frame) => Poll::Ready(Ok(frame)),
                // Watch for the reader going away while the body is
                // pending, not only at the next send. Asked after the body,
                // so that a body that is ready costs no lock here.
                Poll::Pending if tx.poll_closed(cx).is_ready() => {
                    Poll::Ready(Err(Pumped::Cancelled))
                }
                Poll::Pending => turn.waited(Poll::Pending),
            }
        })
        .await;
        let (msg, end) = match next {
            Err(end) => return end,
            Ok(Ok(Some(Ok(frame)))) => (Msg::Frame(frame), None),
            Ok(Ok(Some(Err(error)))) => (Msg::Error(error), Some(Pumped::Done)),
            Ok(Ok(None)) => (Msg::End, Some(Pumped::Done)),
            Ok(Err(panic)) => (Msg::Error(panic.into()), Some(Pumped::Panicked)),
        };
        let sent = match stream.merge {
            0 => tx.send(msg),
            cap => tx.send_merging(msg, |last, msg| last.merge(msg, cap)),
        };
        if let Some(end) = end {
            return end;
        }
        let Ok(sent) = sent else {
            return Pumped::Cancelled;
        };
        room = sent.room;
        if turn.is_over(sent.merged) {
            park::yield_now().await;
            turn = Turn::new();
        }
    }
}

/// One turn of a stream: from its start, or from the last time it waited
/// (the worker served others meanwhile), to its yield.
struct Turn {
    started: Clock,
    queued: usize,
    polled: usize,
}

impl Turn {
    fn new() -> Self {
        Self {
            started: Clock::now(),
            queued: 0,
            polled: 0,
        }
    }

    /// Passes `poll` on; a wait (`Pending`) starts a new turn.
    fn waited<T>(&mut self, poll: Poll<T>) -> Poll<T> {
        if poll.is_pending() {
            *self = Self::new();
        }
        poll
    }

    /// Counts a frame sent (or `merged`); whether the turn has used up its
    /// counts or its time. The clock is read once per body poll: a few
    /// nanoseconds beside any poll that makes a frame.
    fn is_over(&mut self, merged: bool) -> bool {
        self.queued += usize::from(!merged);
        self.polled += 1;
        self.queued >= FRAMES_PER_TURN
            || self.polled >= POLLS_PER_TURN
            || self.started.elapsed() >= TIME_PER_TURN
    }
}
