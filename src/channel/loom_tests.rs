//! Loom models of the frame channel: every interleaving of one producer and
//! one reader. `loom::future::block_on` parks a model thread until its
//! waker is woken, so a lost wake-up shows as a deadlock that loom reports.

use std::future::poll_fn;

use loom::future::block_on;
use loom::thread;

use super::*;

/// Runs `f` under loom with at most three preemptions per execution:
/// enough for every wake-up race of two threads and one lock, small enough
/// to finish in seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// An item, or the end marker the worker sends before it lets go.
#[derive(Debug, PartialEq)]
enum Item {
    Data(u32),
    End,
}

/// Every item reaches the reader in order, then the end marker, then the
/// close; neither side misses a wake-up (room, item, close), with a buffer
/// of one so the producer waits for room.
#[test]
fn loom_items_end_and_wake_ups_are_never_lost() {
    model(|| {
        let (tx, mut rx) = channel(1);
        let producer = thread::spawn(move || {
            block_on(poll_fn(|cx| tx.poll_ready(cx))).unwrap();
            let _ = tx.send(Item::Data(0));
            block_on(poll_fn(|cx| tx.poll_ready(cx))).unwrap();
            let _ = tx.send(Item::End);
        });
        let mut seen = Vec::new();
        while let Some(item) = block_on(poll_fn(|cx| rx.poll_recv(cx))) {
            seen.push(item);
        }
        assert_eq!(seen, [Item::Data(0), Item::End]);
        producer.join().unwrap();
    });
}

/// A producer waiting for room learns that the reader went away.
#[test]
fn loom_reader_drop_wakes_a_producer_waiting_for_room() {
    model(|| {
        let (tx, rx) = channel::<Item>(1);
        let _ = tx.send(Item::Data(0));
        let reader = thread::spawn(move || drop(rx));
        assert!(block_on(poll_fn(|cx| tx.poll_ready(cx))).is_err());
        assert!(tx.send(Item::Data(1)).is_err());
        reader.join().unwrap();
    });
}

/// A producer waiting on its inner body (for the close only, with room
/// left) learns that the reader went away.
#[test]
fn loom_reader_drop_wakes_a_producer_waiting_on_its_body() {
    model(|| {
        let (tx, rx) = channel::<Item>(2);
        let _ = tx.send(Item::Data(0));
        let reader = thread::spawn(move || drop(rx));
        block_on(poll_fn(|cx| tx.poll_closed(cx)));
        reader.join().unwrap();
    });
}

/// Merging only happens into an item the reader has not taken yet, and
/// keeps every item's content in order whatever the interleaving.
#[test]
fn loom_merging_keeps_order_and_content() {
    model(|| {
        let (tx, mut rx) = channel::<Vec<u32>>(2);
        let producer = thread::spawn(move || {
            for n in 0..2 {
                block_on(poll_fn(|cx| tx.poll_ready(cx))).unwrap();
                let merged = tx.send_merging(vec![n], |last, item| {
                    last.extend(item);
                    Ok(())
                });
                assert!(merged.is_ok());
            }
        });
        let mut seen = Vec::new();
        while let Some(item) = block_on(poll_fn(|cx| rx.poll_recv(cx))) {
            assert!(!item.is_empty());
            seen.extend(item);
        }
        assert_eq!(seen, [0, 1]);
        producer.join().unwrap();
    });
}

/// A waker that counts its wake-ups before passing them on.
struct Counting {
    wakes: loom::sync::Arc<loom::sync::atomic::AtomicUsize>,
    inner: std::task::Waker,
}

impl std::task::Wake for Counting {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.wakes
            .fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
        self.inner.wake_by_ref();
    }
}

/// Polls `f` with a waker that counts its wake-ups in `wakes`.
fn counted<T>(
    wakes: &loom::sync::Arc<loom::sync::atomic::AtomicUsize>,
    mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> T {
    block_on(poll_fn(|cx| {
        let waker = std::task::Waker::from(std::sync::Arc::new(Counting {
            wakes: wakes.clone(),
            inner: cx.waker().clone(),
        }));
        f(&mut Context::from_waker(&waker))
    }))
}

/// The writer is woken once room frees past half the buffer, never once
/// per item taken: a producer waiting for room on a full buffer of 4,
/// while the reader takes all 4, is woken at most once, and is woken
/// (loom reports the lost wake-up as a deadlock otherwise).
#[test]
fn loom_a_producer_waiting_for_room_is_woken_once_per_half_buffer() {
    use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    model(|| {
        let (tx, mut rx) = channel::<Item>(4);
        for n in 0..4 {
            let _ = tx.send(Item::Data(n));
        }
        let wakes = loom::sync::Arc::new(AtomicUsize::new(0));
        let producer = thread::spawn({
            let wakes = wakes.clone();
            move || {
                counted(&wakes, |cx| tx.poll_ready(cx)).unwrap();
                let _ = tx.send(Item::End);
            }
        });
        let mut seen = Vec::new();
        while let Some(item) = block_on(poll_fn(|cx| rx.poll_recv(cx))) {
            seen.push(item);
        }
        producer.join().unwrap();
        assert_eq!(seen.len(), 5);
        assert!(wakes.load(SeqCst) <= 1, "woken per item");
    });
}

/// The reader is woken only while it waits: items sent while it is busy
/// wake nobody, so it is woken at most once per `Pending` it returned.
#[test]
fn loom_the_reader_is_woken_only_while_it_waits() {
    use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    model(|| {
        let (tx, mut rx) = channel::<Item>(4);
        let producer = thread::spawn(move || {
            let _ = tx.send(Item::Data(0));
            let _ = tx.send(Item::Data(1));
            let _ = tx.send(Item::End);
        });
        let wakes = loom::sync::Arc::new(AtomicUsize::new(0));
        let (mut seen, mut waits) = (Vec::new(), 0);
        while let Some(item) = counted(&wakes, |cx| {
            let polled = rx.poll_recv(cx);
            waits += usize::from(polled.is_pending());
            polled
        }) {
            seen.push(item);
        }
        producer.join().unwrap();
        assert_eq!(seen, [Item::Data(0), Item::Data(1), Item::End]);
        assert!(wakes.load(SeqCst) <= waits, "woken while busy");
    });
}

/// `close_with` (the worker's deadline) replaces what the reader has not
/// taken with one last item and wakes a waiting reader: the reader sees
/// the items it took before, then the last one, never an item after it.
#[test]
fn loom_close_with_replaces_what_is_left_and_wakes_the_reader() {
    model(|| {
        let (tx, mut rx) = channel::<Item>(2);
        let producer = thread::spawn(move || {
            let _ = tx.send(Item::Data(0));
            let _ = tx.send(Item::Data(1));
            assert!(tx.close_with(Item::End).is_ok(), "the reader is here");
        });
        let mut seen = Vec::new();
        while let Some(item) = block_on(poll_fn(|cx| rx.poll_recv(cx))) {
            seen.push(item);
        }
        producer.join().unwrap();
        assert_eq!(seen.last(), Some(&Item::End));
        let before = &seen[..seen.len() - 1];
        assert!(
            before.is_empty()
                || before == [Item::Data(0)]
                || before == [Item::Data(0), Item::Data(1)],
            "{seen:?}"
        );
    });
}

/// The reader closing (its deadline passed) frees what is queued at once,
/// before the receiver is dropped, and a producer waiting on its body
/// learns it: it is woken, and its next send says `Closed`.
#[test]
fn loom_a_reader_that_closes_frees_the_buffer_and_wakes_the_producer() {
    model(|| {
        let (tx, mut rx) = channel::<loom::sync::Arc<()>>(2);
        let queued = loom::sync::Arc::new(());
        let _ = tx.send(queued.clone());
        let reader = thread::spawn(move || {
            rx.close();
            rx
        });
        block_on(poll_fn(|cx| tx.poll_closed(cx)));
        assert!(tx.send(loom::sync::Arc::new(())).is_err());
        let rx = reader.join().unwrap();
        assert_eq!(loom::sync::Arc::strong_count(&queued), 1, "still held");
        drop(rx);
    });
}
