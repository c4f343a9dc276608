//! Loom models of the shard protocol (`src/shard/mailbox.rs`): run token, mailbox, reply slots,
//! hand-over, re-check on release, async cancellation, drop, and the sweeper racing a caller.
//!
//! Run with `RUSTFLAGS="--cfg eyelet_loom" LOOM_MAX_PREEMPTIONS=5 CARGO_TARGET_DIR=target/loom
//! cargo test --release -p eyelet-loom-tests` (as `.ci/run` does; the three-thread models cap
//! themselves at 3 preemptions). The actor state is a loom `UnsafeCell` inside the cell, so any
//! two executors touching it at once fail the model; every model also checks that each message
//! ran exactly once (or, if cancelled, at most once).
#![cfg(eyelet_loom)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, RawWaker, RawWakerVTable, Waker};

use eyelet::loom_support::{AbsoluteShard, Cell};
use loom::sync::Arc;
use loom::thread::{self, JoinHandle};

/// State: the ids of the messages served, in order.
type Log = Vec<u32>;

/// Runs a model with at most `cap` preemptions (or fewer if `LOOM_MAX_PREEMPTIONS` says so):
/// the three-thread models explode combinatorially past 3.
fn model_capped<F: Fn() + Sync + Send + 'static>(cap: usize, f: F) {
    let mut builder = loom::model::Builder::new();
    let bound = builder.preemption_bound.map_or(cap, |b| b.min(cap));
    builder.preemption_bound = Some(bound);
    builder.check(f);
}

fn new_cell() -> Arc<Cell<Log>> {
    Arc::new(Cell::new(Log::new()))
}

/// Sends message `id` (logs `id`, replies `id`) and checks the reply is its own, read after it
/// was written.
fn call_id(cell: &Cell<Log>, id: u32) {
    let reply = cell.call(move |log| {
        log.push(id);
        id
    });
    assert_eq!(
        reply, id,
        "a caller reads its own reply, after it was written"
    );
}

/// The async form of [`call_id`], polled to completion with loom's waker.
fn call_id_async(cell: &Cell<Log>, id: u32) {
    let reply = loom::future::block_on(cell.call_async(move |log: &mut Log| {
        log.push(id);
        id
    }));
    assert_eq!(reply, id);
}

/// Polls an async call for `id` once (served inline, or queued), then drops it wherever it is.
fn call_id_async_then_cancel(cell: &Cell<Log>, id: u32) {
    let mut fut = Box::pin(cell.call_async(move |log: &mut Log| log.push(id)));
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);
    let _ = Pin::new(&mut fut).poll(&mut cx);
}

/// Runs `f` on a loom thread with its own handle to `cell`.
fn spawn_with(
    cell: &Arc<Cell<Log>>,
    f: impl FnOnce(&Cell<Log>) + Send + 'static,
) -> JoinHandle<()> {
    let cell = cell.clone();
    thread::spawn(move || f(&cell))
}

fn join_all(handles: impl IntoIterator<Item = JoinHandle<()>>) {
    for h in handles {
        h.join().unwrap();
    }
}

fn served(cell: &Cell<Log>) -> Log {
    cell.call(|log| log.clone())
}

fn assert_exactly_once(mut log: Log, expected: &[u32]) {
    log.sort_unstable();
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(log, want, "every message served exactly once");
}

fn count(log: &Log, id: u32) -> usize {
    log.iter().filter(|&&x| x == id).count()
}

fn noop_waker() -> Waker {
    fn clone(_: *const ()) -> RawWaker {
        RawWaker::new(std::ptr::null(), &VTABLE)
    }
    fn noop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: every vtable function ignores the data pointer.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

#[test]
fn racing_callers_each_served_once_with_their_own_reply() {
    loom::model(|| {
        let cell = new_cell();
        let handles = [0, 1].map(|id| spawn_with(&cell, move |c| call_id(c, id)));
        call_id(&cell, 9);
        join_all(handles);
        assert_exactly_once(served(&cell), &[0, 1, 9]);
    });
}

#[test]
fn enqueue_racing_release_strands_nothing() {
    // One executor finishing while another caller enqueues: the release must notice the node.
    loom::model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| {
            call_id(c, 1);
            call_id(c, 2);
        });
        call_id(&cell, 3);
        join_all([t]);
        assert_exactly_once(served(&cell), &[1, 2, 3]);
    });
}

#[test]
fn hand_over_passes_token_and_rest_of_chain() {
    // Under loom the combining budget is 1, so with three callers the executor hands the token
    // to a queued waiter together with the remaining chain.
    assert_eq!(eyelet::loom_support::COMBINE_BUDGET, 1);
    let before = eyelet::loom_support::hand_overs();
    model_capped(3, || {
        let cell = new_cell();
        let handles = [0, 1].map(|id| spawn_with(&cell, move |c| call_id(c, id)));
        call_id(&cell, 7);
        join_all(handles);
        assert_exactly_once(served(&cell), &[0, 1, 7]);
    });
    assert!(
        eyelet::loom_support::hand_overs().0 > before.0,
        "the model must reach the hand-over to a waiting thread"
    );
}

#[test]
fn reply_slot_reuse_by_the_same_caller() {
    // A caller reuses its stack slot right after DONE; the executor must not touch it again.
    loom::model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| {
            call_id(c, 10);
            call_id(c, 11);
        });
        call_id(&cell, 20);
        call_id(&cell, 21);
        join_all([t]);
        assert_exactly_once(served(&cell), &[10, 11, 20, 21]);
    });
}

#[test]
fn three_callers_with_hand_over_and_reuse() {
    // Budget 1 under loom: with three callers, one of them executes after a hand-over (to a
    // spinning waiter, or past MAX_TURN to a parked one), with the rest of the chain; the
    // second call of a thread reuses its slot right after DONE.
    let before = eyelet::loom_support::hand_overs();
    model_capped(3, || {
        let cell = new_cell();
        let handles = [0, 10].map(|base| {
            spawn_with(&cell, move |c| {
                call_id(c, base);
                call_id(c, base + 1);
            })
        });
        call_id(&cell, 99);
        join_all(handles);
        assert_exactly_once(served(&cell), &[0, 1, 10, 11, 99]);
    });
    assert!(
        eyelet::loom_support::hand_overs().0 > before.0,
        "the model must reach the hand-over to a waiting thread"
    );
}

#[test]
fn async_caller_is_served_and_woken() {
    loom::model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| call_id(c, 1));
        call_id_async(&cell, 2);
        join_all([t]);
        assert_exactly_once(served(&cell), &[1, 2]);
    });
}

#[test]
fn sync_and_async_callers_mixed() {
    loom::model(|| {
        let cell = new_cell();
        let t1 = spawn_with(&cell, |c| call_id(c, 1));
        let t2 = spawn_with(&cell, |c| call_id_async(c, 2));
        call_id(&cell, 3);
        join_all([t1, t2]);
        assert_exactly_once(served(&cell), &[1, 2, 3]);
    });
}

#[test]
fn cancelled_async_call_is_served_at_most_once_and_never_written_after_drop() {
    loom::model(|| {
        let cell = new_cell();
        // Another caller keeps the actor busy so the async call may be queued.
        let t = spawn_with(&cell, |c| call_id(c, 1));
        call_id_async_then_cancel(&cell, 2);
        join_all([t]);
        let log = served(&cell);
        assert!(
            count(&log, 2) <= 1,
            "a cancelled call runs at most once: {log:?}"
        );
        assert_eq!(count(&log, 1), 1);
    });
}

#[test]
fn cancelled_nodes_are_freed_by_shutdown() {
    // A future is cancelled wherever its node is (unpublished, queued, claimed, done) while a
    // sync caller executes; then everything shuts down. Loom reports any leaked Arc node, so
    // this checks that the executor or the future releases every node exactly once.
    loom::model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| call_id_async_then_cancel(c, 5));
        call_id(&cell, 6);
        join_all([t]);
        drop(cell);
    });
}

#[test]
fn two_async_callers_one_cancelled() {
    loom::model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| call_id_async_then_cancel(c, 1));
        call_id_async(&cell, 2);
        join_all([t]);
        let log = served(&cell);
        assert_eq!(count(&log, 2), 1);
        assert!(count(&log, 1) <= 1);
    });
}

#[test]
fn async_callers_back_off_when_the_mailbox_is_full() {
    // Under loom the async mailbox holds one node: with a sync executor busy and two async
    // callers, the second may find it full, yield to its executor and retry.
    model_capped(3, || {
        let cell = new_cell();
        let handles = [1, 2].map(|id| spawn_with(&cell, move |c| call_id_async(c, id)));
        call_id(&cell, 3);
        join_all(handles);
        assert_exactly_once(served(&cell), &[1, 2, 3]);
    });
}

#[test]
fn token_handed_to_an_async_caller_past_max_turn() {
    // Budget 1, MAX_TURN 2 under loom: an executor that served its own and one queued sync
    // request hands the token to a queued async caller, which executes when polled.
    let before = eyelet::loom_support::hand_overs();
    model_capped(3, || {
        let cell = new_cell();
        let t1 = spawn_with(&cell, |c| call_id(c, 1));
        let t2 = spawn_with(&cell, |c| call_id_async(c, 2));
        call_id(&cell, 3);
        join_all([t1, t2]);
        assert_exactly_once(served(&cell), &[1, 2, 3]);
    });
    assert!(
        eyelet::loom_support::hand_overs().1 > before.1,
        "the model must reach the hand-over to a task"
    );
}

#[test]
fn async_caller_dropped_while_holding_a_handed_over_token() {
    // The async caller may be handed the token and then dropped before it is polled again: its
    // drop serves the rest of the chain, so the sync callers are never stranded, and its own
    // message is withdrawn or served, never both.
    model_capped(3, || {
        let cell = new_cell();
        let t1 = spawn_with(&cell, |c| call_id(c, 1));
        let t2 = spawn_with(&cell, |c| call_id_async_then_cancel(c, 2));
        call_id(&cell, 3);
        join_all([t1, t2]);
        let log = served(&cell);
        assert_eq!(count(&log, 1), 1);
        assert_eq!(count(&log, 3), 1);
        assert!(count(&log, 2) <= 1);
    });
}

#[test]
fn completed_future_after_executor_finished() {
    // Poll to completion with a real loom waker while a sync caller executes; replies see each
    // other's effects in one of the two orders.
    loom::model(|| {
        let cell = Arc::new(Cell::new(0u32));
        let c2 = cell.clone();
        let t = thread::spawn(move || {
            c2.call(|n| {
                *n += 1;
                *n
            })
        });
        let got = loom::future::block_on(cell.call_async(|n: &mut u32| {
            *n += 10;
            *n
        }));
        let other = t.join().unwrap();
        assert!(got == 10 || got == 11);
        assert!(other == 1 || other == 11);
        assert_eq!(cell.call(|n| *n), 11);
    });
}

#[test]
fn sweeper_against_caller_on_a_real_shard() {
    loom::model(|| {
        let shard = Arc::new(AbsoluteShard::new(10));
        assert!(shard.inc("a", 1000.0));
        shard.clock().set_ms(100);
        let s2 = shard.clone();
        let sweeper = thread::spawn(move || s2.sweep());
        // `a` expired long ago; `b` is new. Whatever the order, `b` is counted and kept.
        assert!(shard.inc("b", 100.0));
        let evicted = sweeper.join().unwrap();
        assert!(evicted <= 1);
        // b's window is full at 100 req/s over 10 ms (capacity 1): a second inc is rejected,
        // so the sweeper did not drop live state.
        assert!(!shard.inc("b", 100.0));
    });
}
