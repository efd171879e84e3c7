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
