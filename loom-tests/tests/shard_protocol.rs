//! Loom models of the shard protocol (`src/shard/mailbox.rs`), named after the edges of its
//! state table: run token, mailbox, reply slots, hand-over, orphaned chains, re-check on
//! release, async cancellation, drop, and the sweeper racing a caller.
//!
//! Run with `RUSTFLAGS="--cfg eyelet_loom" CARGO_TARGET_DIR=target/loom cargo test --release -p
//! eyelet-loom-tests` (as `.ci/run` does). Two-thread models run exhaustively (no preemption
//! bound); three-thread models are bounded at 3 preemptions (or `LOOM_MAX_PREEMPTIONS`, if
//! lower). The actor state is a loom `UnsafeCell` inside the cell, so any two executors touching
//! it at once fail the model; every model checks that each message ran exactly once (or, if
//! cancelled, at most once) and that the branch it is named for was reached.
#![cfg(eyelet_loom)]

mod support;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use eyelet::loom_support::{reached_count, AbsoluteShard, Branch, Cell};
use loom::sync::Arc;
use loom::thread::{self, JoinHandle};
use support::{model, model_capped};

/// State: the ids of the messages served, in order.
type Log = Vec<u32>;

/// Runs `run`, then asserts that it reached `branch` at least once.
fn reaching(branch: Branch, run: impl FnOnce()) {
    let before = reached_count(branch);
    run();
    assert!(
        reached_count(branch) > before,
        "the model never reached {branch:?}"
    );
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

// ---- sync callers: WAITING → DONE / PARKED / HANDOVER --------------------------------------

#[test]
fn waiting_to_done_racing_sync_callers() {
    model_capped(3, || {
        let cell = new_cell();
        let handles = [0, 1].map(|id| spawn_with(&cell, move |c| call_id(c, id)));
        call_id(&cell, 9);
        join_all(handles);
        assert_exactly_once(served(&cell), &[0, 1, 9]);
    });
}

#[test]
fn release_recheck_strands_nothing() {
    // One executor releasing while another caller enqueues: the release must notice the node.
    model(|| {
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
fn waiting_to_parked_then_done() {
    // A waiter that spun and yielded parks; the executor completes it and unparks it. (Loom
    // runs a yielding thread's peers first, so a waiter parks only behind a longer chain: three
    // callers.)
    reaching(Branch::Parked, || {
        model_capped(3, || {
            let cell = new_cell();
            let handles = [1, 2].map(|id| spawn_with(&cell, move |c| call_id(c, id)));
            call_id(&cell, 3);
            join_all(handles);
            assert_exactly_once(served(&cell), &[1, 2, 3]);
        });
    });
}

#[test]
fn waiting_to_handover_token_and_chain_to_a_spinning_waiter() {
    // Budget 1 under loom: with three callers the executor hands the token to a spinning
    // waiter together with the rest of the chain.
    assert_eq!(eyelet::loom_support::COMBINE_BUDGET, 1);
    reaching(Branch::HandOverSpinning, || {
        model_capped(3, || {
            let cell = new_cell();
            let handles = [0, 1].map(|id| spawn_with(&cell, move |c| call_id(c, id)));
            call_id(&cell, 7);
            join_all(handles);
            assert_exactly_once(served(&cell), &[0, 1, 7]);
        });
    });
}

#[test]
fn parked_to_handover_at_the_end_of_a_turn() {
    // MAX_TURN 2 under loom: an executor that served two items ends its turn and gives the
    // token to the first sync caller of its chain even if it parked; the second call of a
    // thread reuses its stack slot right after DONE.
    assert_eq!(eyelet::loom_support::MAX_TURN, 2);
    reaching(Branch::HandOverAtTurnEnd, || {
        reaching(Branch::HandOverParked, || {
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
        });
    });
}

#[test]
fn done_then_the_same_caller_reuses_its_slot() {
    // A caller reuses its stack slot right after DONE; the executor must not touch it again.
    model(|| {
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

// ---- async callers: WAITING → TAKEN → DONE, WAITING → CANCELLED ----------------------------

#[test]
fn waiting_to_taken_to_done_wakes_the_async_caller() {
    model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| call_id(c, 1));
        call_id_async(&cell, 2);
        join_all([t]);
        assert_exactly_once(served(&cell), &[1, 2]);
    });
}

#[test]
fn sync_and_async_callers_mixed() {
    model_capped(3, || {
        let cell = new_cell();
        let t1 = spawn_with(&cell, |c| call_id(c, 1));
        let t2 = spawn_with(&cell, |c| call_id_async(c, 2));
        call_id(&cell, 3);
        join_all([t1, t2]);
        assert_exactly_once(served(&cell), &[1, 2, 3]);
    });
}

#[test]
fn waiting_to_cancelled_is_discarded_and_served_at_most_once() {
    reaching(Branch::Discarded, || {
        model(|| {
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
    });
}

#[test]
fn cancelled_anywhere_then_shutdown_frees_every_node() {
    // A future is cancelled wherever its node is (unpublished, queued, claimed, done) while a
    // sync caller executes; then everything shuts down. Loom reports any leaked Arc node, so
    // this checks that the executor or the future releases every node exactly once.
    model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| call_id_async_then_cancel(c, 5));
        call_id(&cell, 6);
        join_all([t]);
        drop(cell);
    });
}

#[test]
fn two_async_callers_one_cancelled() {
    model(|| {
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
fn mailbox_full_backs_off_and_retries() {
    // Under loom the async mailbox holds one node: with a sync executor busy and two async
    // callers, the second may find it full, yield to its executor and retry.
    reaching(Branch::MailboxFull, || {
        model_capped(3, || {
            let cell = new_cell();
            let handles = [1, 2].map(|id| spawn_with(&cell, move |c| call_id_async(c, id)));
            call_id(&cell, 3);
            join_all(handles);
            assert_exactly_once(served(&cell), &[1, 2, 3]);
        });
    });
}

#[test]
fn waker_replaced_between_polls_is_the_one_woken() {
    // The future is polled once with one waker (and queued), then polled to completion by an
    // executor with another: the reply must wake the second (waking the stale one would leave
    // `block_on` asleep forever, a deadlock loom reports).
    model(|| {
        let cell = new_cell();
        let t = spawn_with(&cell, |c| call_id(c, 1));
        let mut fut = Box::pin(cell.call_async(|log: &mut Log| {
            log.push(2);
            2
        }));
        let waker = noop_waker();
        let first = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker));
        let got = match first {
            Poll::Ready(v) => v,
            Poll::Pending => loom::future::block_on(fut),
        };
        assert_eq!(got, 2);
        join_all([t]);
        assert_exactly_once(served(&cell), &[1, 2]);
    });
}

// ---- the end of a turn: no task ever holds the token -----------------------------------------

#[test]
fn orphaned_chain_adopted_by_the_woken_task() {
    // MAX_TURN 2: an executor that served two items with only async callers left orphans them
    // and wakes the oldest, which takes the token when polled.
    reaching(Branch::Orphaned, || {
        reaching(Branch::AdoptedByTask, || {
            model_capped(3, || {
                let cell = new_cell();
                let t1 = spawn_with(&cell, |c| call_id(c, 1));
                let t2 = spawn_with(&cell, |c| call_id_async(c, 2));
                call_id_async(&cell, 3);
                join_all([t1, t2]);
                assert_exactly_once(served(&cell), &[1, 2, 3]);
            });
        });
    });
}

#[test]
fn orphaned_chain_adopted_by_an_arriving_caller() {
    // A caller (sync here) that arrives at an orphaned chain takes the token at once and
    // serves the chain: it never waits for the woken task.
    reaching(Branch::AdoptedByCaller, || {
        model_capped(3, || {
            let cell = new_cell();
            let t1 = spawn_with(&cell, |c| {
                call_id(c, 1);
                call_id(c, 4);
            });
            let t2 = spawn_with(&cell, |c| call_id_async(c, 2));
            call_id_async(&cell, 3);
            join_all([t1, t2]);
            assert_exactly_once(served(&cell), &[1, 2, 3, 4]);
        });
    });
}

#[test]
fn orphaned_chain_adopted_in_the_drop_of_a_cancelled_future() {
    // The task woken to take over an orphaned chain may be dropped instead of polled: its drop
    // takes the token and serves the others, so nobody waits for the next caller.
    reaching(Branch::AdoptedInDrop, || {
        model_capped(3, || {
            let cell = new_cell();
            let t1 = spawn_with(&cell, |c| call_id(c, 1));
            let t2 = spawn_with(&cell, |c| call_id_async_then_cancel(c, 2));
            call_id_async(&cell, 3);
            join_all([t1, t2]);
            let log = served(&cell);
            assert_eq!(count(&log, 1), 1);
            assert_eq!(count(&log, 3), 1);
            assert!(count(&log, 2) <= 1);
        });
    });
}

#[test]
fn a_sync_call_on_the_thread_of_a_queued_task_never_waits_for_that_task() {
    // One thread polls an async call once (it may queue), then makes a sync call on the same
    // actor before polling the task again (`join!(inc_async(a), async { inc(b) })`, or an actix
    // arbiter mixing both forms). Whatever an executor does with the queued task, the sync
    // call must complete: the token may never go to a task whose thread is blocked here
    // (before issue 7.4 it did, and loom reported the deadlock).
    model_capped(3, || {
        let cell = new_cell();
        let t1 = spawn_with(&cell, |c| {
            let mut fut = Box::pin(c.call_async(move |log: &mut Log| {
                log.push(1);
                1
            }));
            let waker = noop_waker();
            let first = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker));
            call_id(c, 2);
            let got = match first {
                Poll::Ready(v) => v,
                Poll::Pending => loom::future::block_on(fut),
            };
            assert_eq!(got, 1);
        });
        let t2 = spawn_with(&cell, |c| call_id(c, 3));
        call_id(&cell, 4);
        join_all([t1, t2]);
        assert_exactly_once(served(&cell), &[1, 2, 3, 4]);
    });
}

#[test]
fn orphaning_raced_by_a_sync_push_loses_no_wake_up() {
    // An executor ending its turn with only an async caller left prepares to orphan it; a sync
    // caller pushes before the orphaning compare-exchange, which fails, and the token goes to
    // the sync caller with the async node in its chain. The async caller's waker must survive
    // that failed attempt: it is woken when its node is served (else `block_on` sleeps forever,
    // a deadlock loom reports). Found by review: the failed attempt used to take the waker
    // with it. Needs 4 preemptions (about 5 minutes).
    reaching(Branch::OrphanRaced, || {
        model_capped(4, || {
            let cell = new_cell();
            let t1 = spawn_with(&cell, |c| {
                let mut fut = Box::pin(c.call_async(move |log: &mut Log| {
                    log.push(1);
                    1
                }));
                let waker = noop_waker();
                let first = Pin::new(&mut fut).poll(&mut Context::from_waker(&waker));
                call_id(c, 2);
                let got = match first {
                    Poll::Ready(v) => v,
                    Poll::Pending => loom::future::block_on(fut),
                };
                assert_eq!(got, 1);
            });
            let t2 = spawn_with(&cell, |c| call_id_async(c, 3));
            call_id(&cell, 4);
            join_all([t1, t2]);
            assert_exactly_once(served(&cell), &[1, 2, 3, 4]);
        })
    });
}

#[test]
fn wake_list_full_ends_the_turn() {
    // Under loom the wake list holds one wake-up: an executor that owes one (a woken task or an
    // unparked thread) ends its turn there and passes the token on before waking.
    reaching(Branch::WakeListFull, || {
        model_capped(3, || {
            let cell = new_cell();
            let t1 = spawn_with(&cell, |c| call_id_async(c, 1));
            let t2 = spawn_with(&cell, |c| call_id(c, 2));
            call_id(&cell, 3);
            join_all([t1, t2]);
            assert_exactly_once(served(&cell), &[1, 2, 3]);
        });
    });
}

#[test]
fn drop_cell_with_queued_nodes() {
    // Leaked futures (polled once, then never polled nor dropped) can leave their nodes in an
    // orphaned chain; dropping the cell releases the mailbox's references (loom reports any
    // leak) and marks the nodes cancelled.
    reaching(Branch::DroppedWithQueued, || {
        model_capped(3, || {
            let cell = new_cell();
            let c2 = cell.clone();
            let t = thread::spawn(move || call_id(&c2, 1));
            let a = cell.call_leaked(|log: &mut Log| log.push(2));
            let b = cell.call_leaked(|log: &mut Log| log.push(3));
            join_all([t]);
            drop(cell);
            for call in [&a, &b] {
                assert!(
                    call.is_done() != call.is_cancelled(),
                    "served, or withdrawn by the drop: exactly one"
                );
            }
            drop((a, b));
        });
    });
}

// ---- real shards --------------------------------------------------------------------------

#[test]
fn completed_future_after_executor_finished() {
    // Poll to completion with a real loom waker while a sync caller executes; replies see each
    // other's effects in one of the two orders.
    model(|| {
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
    model(|| {
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
