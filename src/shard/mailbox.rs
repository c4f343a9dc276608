//! Caller-runs execution of one actor: run token, mailbox, reply slots, hand-over.
//!
//! This is the only module of the crate with `unsafe` code. An [`ActorCell`] is an actor (state
//! plus a mailbox, one message processed at a time by exactly one executor) that owns no thread:
//! the executor is whichever caller finds the actor idle (flat combining / delegation).
//!
//! # Protocol
//! One atomic word holds both the run token and the mailbox head:
//!
//! | word            | meaning                                                   |
//! |-----------------|-----------------------------------------------------------|
//! | `0`             | idle: nobody runs the actor, the mailbox is empty          |
//! | `RUNNING`       | an executor holds the token, the mailbox is empty          |
//! | `ptr \| RUNNING` | an executor holds the token, `ptr` is the newest message   |
//!
//! so "the mailbox is non-empty" implies "somebody holds the token": a release is a single
//! `RUNNING → 0` compare-exchange that fails exactly when a message arrived meanwhile, which the
//! releasing executor then takes and serves (the re-check on release; no lost wake-up).
//!
//! - A caller that finds the word `0` takes the token and serves its own message without
//!   publishing it (the fast path: one compare-exchange to take, one to release).
//! - Otherwise it pushes a node (its message, a reply slot and a status byte) onto the word and
//!   waits: spins, then yields, then parks (sync callers), or registers a waker (async callers).
//! - The executor serves its own message, then the nodes it takes from the word in arrival order,
//!   at most [`COMBINE_BUDGET`] per turn; past the budget it hands the token to the next queued
//!   sync caller that is still spinning, together with the rest of the taken chain, and past
//!   [`MAX_TURN`] to the next queued caller whatever it is doing (a parked thread is unparked, a
//!   task is woken and takes over when polled; a dropped future serves the chain in `drop`).
//! - A node's message is moved out and its reply written before its status turns `DONE`; after
//!   that store the executor never touches a sync node again (its owner may return and reuse the
//!   stack slot at once). Async nodes are reference counted, so a dropped future cannot free a
//!   node the executor still holds, and a future dropped before its message was claimed marks the
//!   node `CANCELLED`: the executor then discards it without serving it.

use std::ptr;
use std::task::{Context, Poll, Waker};

use crate::sync::{
    current_thread, lock, park, spin, yield_now, Arc, AtomicU8, AtomicUsize, Mutex, Ordering,
    Thread, UnsafeCell,
};

/// Requests an executor serves in one turn before it hands the token over (research notes: about
/// 4 beat both 1 and 64 under oversubscription).
pub(crate) const COMBINE_BUDGET: usize = if cfg!(eyelet_loom) { 1 } else { 4 };
/// Requests an executor serves in one turn at most while no waiter is spinning: past this it
/// hands the token to the next queued caller whatever it is doing (paying its wake-up), so no
/// caller's thread is kept serving others indefinitely.
pub(crate) const MAX_TURN: usize = if cfg!(eyelet_loom) { 2 } else { 64 };
/// Busy-wait rounds before a sync waiter starts yielding.
const SPIN_ROUNDS: usize = if cfg!(eyelet_loom) { 1 } else { 64 };
/// `yield_now` rounds before a sync waiter parks.
const YIELD_ROUNDS: usize = if cfg!(eyelet_loom) { 1 } else { 4 };
/// Busy-wait rounds an async caller spends before it returns `Pending`.
const ASYNC_SPIN_ROUNDS: usize = if cfg!(eyelet_loom) { 1 } else { 32 };
/// Async messages one actor's mailbox holds at most; further async callers yield to their
/// executor until room frees up. Sync callers need no bound: each blocks with one node.
pub(crate) const ASYNC_MAILBOX_CAPACITY: usize = if cfg!(eyelet_loom) { 1 } else { 4096 };

#[cfg(eyelet_loom)]
std::thread_local! {
    /// Hand-overs performed on this OS thread (a loom model runs all its threads on the test's
    /// thread), to sync and to async callers, so each model can show it reached those paths.
    pub(crate) static HANDOVERS: std::cell::Cell<(usize, usize)> =
        const { std::cell::Cell::new((0, 0)) };
}

#[inline]
fn count_hand_over(to_async: bool) {
    #[cfg(eyelet_loom)]
    HANDOVERS.with(|c| {
        let (sync, task) = c.get();
        c.set(if to_async {
            (sync, task + 1)
        } else {
            (sync + 1, task)
        });
    });
    let _ = to_async;
}

const IDLE: usize = 0;
const RUNNING: usize = 1;

// Node status values.
const WAITING: u8 = 0;
const PARKED: u8 = 1;
const TAKEN: u8 = 2;
const DONE: u8 = 3;
const HANDOVER: u8 = 4;
const CANCELLED: u8 = 5;

/// A message an actor of state `S` can process.
pub(crate) trait Message<S> {
    /// What the caller gets back.
    type Reply;
    /// Processes the message against the actor's state. Runs on whichever thread executes.
    fn handle(self, state: &mut S) -> Self::Reply;
}

/// A message an async caller can queue: it must own its data while it waits in the mailbox,
/// because the future that sent it may be dropped (borrowed data would dangle).
pub(crate) trait Detach<S>: Message<S> + Send {
    /// The owned form.
    type Owned: Message<S, Reply = Self::Reply> + Send + 'static;
    /// Copies whatever the message borrows.
    fn detach(self) -> Self::Owned;
}

/// The type-erased part of every mailbox node. `#[repr(C)]` and first in each node type, so a
/// `*const Slot<S>` converts back to the concrete node inside the node's own functions.
#[repr(C)]
struct Slot<S> {
    /// Next node: written by the pusher before publishing, rewritten by the executor when it
    /// reverses a taken chain into arrival order.
    next: UnsafeCell<*const Slot<S>>,
    status: AtomicU8,
    /// Claims the node for serving; false means the node was cancelled.
    claim: unsafe fn(*const Slot<S>) -> bool,
    /// Moves the message out, handles it and stores the reply, then publishes `DONE`; returns
    /// the wake-up its owner needs, which the executor performs after its turn.
    serve: unsafe fn(*const Slot<S>, &mut S) -> Option<Wake>,
    /// Gives the run token to the node's owner if it is still spinning, or (with `force`) even
    /// if it parked.
    hand_over: unsafe fn(*const Slot<S>, bool) -> bool,
    /// Drops the mailbox's reference to a node that was claimed by nobody (cancelled).
    discard: unsafe fn(*const Slot<S>),
    /// Whether this is an async (reference-counted) node.
    is_async: bool,
}

impl<S> Slot<S> {
    fn new(
        claim: unsafe fn(*const Slot<S>) -> bool,
        serve: unsafe fn(*const Slot<S>, &mut S) -> Option<Wake>,
        hand_over: unsafe fn(*const Slot<S>, bool) -> bool,
        discard: unsafe fn(*const Slot<S>),
        is_async: bool,
    ) -> Self {
        Self {
            next: UnsafeCell::new(ptr::null()),
            status: AtomicU8::new(WAITING),
            claim,
            serve,
            hand_over,
            discard,
            is_async,
        }
    }
}

/// An actor's state and mailbox, executed by its callers.
pub(crate) struct ActorCell<S> {
    word: AtomicUsize,
    /// Async nodes currently in the mailbox (bounded by [`ASYNC_MAILBOX_CAPACITY`]).
    async_queued: AtomicUsize,
    state: UnsafeCell<S>,
}

// SAFETY: the state is only reached by the token holder (one thread at a time), and the nodes the
// word points to are either owned by blocked sync callers or kept alive by an `Arc` reference the
// mailbox holds; messages and replies cross threads, hence the `Send` bounds on messages.
unsafe impl<S: Send> Sync for ActorCell<S> {}
// SAFETY: as above; moving the cell moves the state, which is `Send`.
unsafe impl<S: Send> Send for ActorCell<S> {}

/// A wake-up owed to a served caller: done after the executor's turn, so that futex wakes and
/// task scheduling (foreign code) do not lengthen the time others wait for the token.
enum Wake {
    Thread(Thread),
    Task(Waker),
}

impl Wake {
    fn wake(self) {
        match self {
            Wake::Thread(t) => t.unpark(),
            Wake::Task(w) => w.wake(),
        }
    }
}

/// Wake-ups collected during one turn (flushed early if this fills up).
struct Wakes {
    pending: [Option<Wake>; WAKE_BATCH],
    len: usize,
}

/// Wake-ups an executor holds back at most before it performs them in its turn.
const WAKE_BATCH: usize = 8;

impl Wakes {
    fn new() -> Self {
        Self {
            pending: Default::default(),
            len: 0,
        }
    }

    #[inline]
    fn push(&mut self, w: Wake) {
        if self.len == WAKE_BATCH {
            self.flush();
        }
        self.pending[self.len] = Some(w);
        self.len += 1;
    }

    fn flush(&mut self) {
        for w in self.pending[..self.len].iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
        self.len = 0;
    }
}

/// Aborts the process if dropped during a panic. Held wherever unwinding would break the
/// protocol: while a caller's stack node is published (the executor would write into a dead
/// frame) and while a caller executes (the token would stay held and every waiter hang).
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The panic message has been printed; continuing would hang or corrupt memory.
            std::process::abort();
        }
    }
}

enum Pushed {
    /// The node is in the mailbox.
    Queued,
    /// The actor was idle: the caller now holds the token and its node was not published.
    Acquired,
}

impl<S> ActorCell<S> {
    /// A new idle actor owning `state`.
    pub(crate) fn new(state: S) -> Self {
        Self {
            word: AtomicUsize::new(IDLE),
            async_queued: AtomicUsize::new(0),
            state: UnsafeCell::new(state),
        }
    }

    /// Takes the token if the actor is idle.
    #[inline]
    fn try_acquire(&self) -> bool {
        self.word
            .compare_exchange(IDLE, RUNNING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Handles `msg` on the state. Caller must hold the token.
    #[inline]
    fn serve_inline<M: Message<S>>(&self, msg: M) -> M::Reply {
        let guard = AbortOnUnwind;
        // SAFETY: the caller holds the run token, so no other thread reads or writes the state
        // until the token is released or handed over (with release ordering).
        let reply = self.state.with_mut(|s| msg.handle(unsafe { &mut *s }));
        std::mem::forget(guard);
        reply
    }

    /// Pushes `slot` onto the mailbox, or takes the token if the actor is idle.
    ///
    /// # Safety
    /// `slot` must stay valid until its status turns `DONE` or `HANDOVER`, or, for async nodes,
    /// carry a reference the executor releases.
    unsafe fn push_or_acquire(&self, slot: *const Slot<S>) -> Pushed {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur == IDLE {
                match self.word.compare_exchange_weak(
                    IDLE,
                    RUNNING,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Pushed::Acquired,
                    Err(actual) => {
                        cur = actual;
                        continue;
                    }
                }
            }
            let head = (cur & !RUNNING) as *const Slot<S>;
            // SAFETY: the node is not published yet, so this thread has exclusive access.
            unsafe { (*slot).next.with_mut(|p| *p = head) };
            match self.word.compare_exchange_weak(
                cur,
                slot as usize | RUNNING,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Pushed::Queued,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Releases the token after serving one's own request: the uncontended case is a single
    /// compare-exchange, inline; anything queued meanwhile is served out of line.
    ///
    /// # Safety
    /// The caller holds the run token and has no taken chain.
    #[inline(always)]
    unsafe fn release(&self) {
        if self
            .word
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: we hold the token.
            unsafe { self.run(ptr::null(), 1) };
        }
    }

    /// Serves `chain` (arrival order) and whatever arrives, until the token is released or
    /// handed over. The caller holds the token and has already served `served` requests.
    ///
    /// # Safety
    /// The caller holds the run token; `chain` is null or a chain taken from this mailbox.
    #[inline(never)]
    unsafe fn run(&self, chain: *const Slot<S>, mut served: usize) {
        let guard = AbortOnUnwind;
        let mut wakes = Wakes::new();
        // SAFETY: forwarded from the caller.
        unsafe { self.run_turn(chain, &mut served, &mut wakes) };
        std::mem::forget(guard);
        // The token is released or handed over: wake the served callers now.
        wakes.flush();
    }

    /// The body of [`run`](Self::run).
    ///
    /// # Safety
    /// As for `run`.
    unsafe fn run_turn(&self, mut chain: *const Slot<S>, served: &mut usize, wakes: &mut Wakes) {
        loop {
            while !chain.is_null() {
                let node = chain;
                // SAFETY: nodes in a taken chain stay valid until completed (see `push_or_acquire`)
                // and the executor owns their `next` field now. Read it before completing: the
                // owner may reuse the node right after.
                let next = unsafe { (*node).next.with(|p| *p) };
                // Copied out before serving: a completed sync node may be gone right after.
                // SAFETY: as above.
                let (is_async, claim, serve, hand_over, discard) = unsafe {
                    let s = &*node;
                    (s.is_async, s.claim, s.serve, s.hand_over, s.discard)
                };
                if is_async {
                    // Leaves the mailbox now (before a woken task could look at the count).
                    self.async_queued.fetch_sub(1, Ordering::Relaxed);
                }
                if *served >= COMBINE_BUDGET {
                    // SAFETY: `node` heads the untaken rest of the chain, its `next` links the
                    // rest; handing over passes the token and that chain to its owner.
                    if unsafe { hand_over(node, *served >= MAX_TURN) } {
                        return;
                    }
                }
                // SAFETY: the node is valid and claimed at most once, here.
                if unsafe { claim(node) } {
                    // SAFETY: token held, so the state is exclusively ours.
                    if let Some(w) = self.state.with_mut(|s| unsafe { serve(node, &mut *s) }) {
                        wakes.push(w);
                    }
                    *served += 1;
                } else {
                    // SAFETY: a cancelled async node; the mailbox's reference is dropped once.
                    unsafe { discard(node) };
                }
                chain = next;
            }
            match self
                .word
                .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(_) => {
                    let head = self.word.swap(RUNNING, Ordering::Acquire);
                    // SAFETY: the chain was just taken from this mailbox by the token holder.
                    chain = unsafe { reverse((head & !RUNNING) as *const Slot<S>) };
                }
            }
        }
    }

    /// Sends `msg` and waits for the reply, serving other callers' messages if this caller finds
    /// the actor idle. Blocks the calling thread while another caller executes.
    #[inline(always)]
    pub(crate) fn call<M>(&self, msg: M) -> M::Reply
    where
        M: Message<S> + Send,
        M::Reply: Send,
    {
        if self.try_acquire() {
            let reply = self.serve_inline(msg);
            // SAFETY: we hold the token.
            unsafe { self.release() };
            return reply;
        }
        self.call_queued(msg)
    }

    /// [`call`](Self::call) when the actor was busy: queue a stack node and wait.
    #[inline(never)]
    fn call_queued<M>(&self, msg: M) -> M::Reply
    where
        M: Message<S> + Send,
        M::Reply: Send,
    {
        let node = SyncNode::new(msg);
        // A pointer to the whole node (the executor reaches the fields after the slot).
        let slot = ptr::addr_of!(node).cast::<Slot<S>>();
        // From the push until DONE or HANDOVER an executor may write into `node`: this frame
        // must not unwind meanwhile.
        let published = AbortOnUnwind;
        // SAFETY: `node` lives on this stack frame, which does not return before the node's
        // status turns DONE or HANDOVER (both waited for below).
        let handed = match unsafe { self.push_or_acquire(slot) } {
            // Never published (a stale `next` from a lost push attempt must be ignored).
            Pushed::Acquired => None,
            Pushed::Queued => Some(node.wait()),
        };
        std::mem::forget(published);
        let rest = match handed {
            Some(DONE) => return node.take_reply(),
            // HANDOVER: the token and the rest of the chain (in `next`) are ours.
            // SAFETY: the hand-over (acquire) gave us the node's `next` field.
            Some(_) => node.slot.next.with(|p| unsafe { *p }),
            None => ptr::null(),
        };
        // We hold the token; no executor touched our message.
        let reply = self.serve_inline(node.take_msg());
        // SAFETY: the token (and the chain, if any) are ours.
        unsafe { self.run(rest, 1) };
        reply
    }

    /// The async form of [`call`](Self::call): never blocks the polling thread beyond a short
    /// spin; cancel-safe (see [`Call`]).
    pub(crate) fn call_async<M>(&self, msg: M) -> Call<'_, S, M>
    where
        M: Detach<S>,
        M::Reply: Send,
    {
        Call {
            cell: self,
            state: CallState::Init(Some(msg)),
        }
    }
}

impl<S> Drop for ActorCell<S> {
    fn drop(&mut self) {
        // With `&mut self` no executor or caller is active, so the mailbox can hold only async
        // nodes whose futures were forgotten; release the mailbox's references.
        let head = self.word.swap(IDLE, Ordering::Acquire);
        // SAFETY: the chain belongs to this mailbox and nobody else can take it now.
        let mut chain = unsafe { reverse((head & !RUNNING) as *const Slot<S>) };
        while !chain.is_null() {
            // SAFETY: valid until discarded; read `next` first.
            let next = unsafe { (*chain).next.with(|p| *p) };
            // SAFETY: each queued node is discarded exactly once. A live sync node cannot be
            // here (its owner borrows the cell), so every node is async.
            unsafe {
                if (*chain).is_async && (*chain).status.load(Ordering::Acquire) != CANCELLED {
                    // Not cancelled: the future was leaked; mark it so it never waits forever.
                    (*chain).status.store(CANCELLED, Ordering::Release);
                }
                ((*chain).discard)(chain);
            }
            chain = next;
        }
    }
}

/// Reverses a chain taken from the word (newest first) into arrival order.
///
/// # Safety
/// The chain must have been taken from a mailbox by its token holder.
unsafe fn reverse<S>(mut head: *const Slot<S>) -> *const Slot<S> {
    let mut prev: *const Slot<S> = ptr::null();
    while !head.is_null() {
        // SAFETY: taken nodes are valid and their `next` fields belong to the token holder.
        let next = unsafe { (*head).next.with(|p| *p) };
        // SAFETY: as above.
        unsafe { (*head).next.with_mut(|p| *p = prev) };
        prev = head;
        head = next;
    }
    prev
}

/// A sync caller's node: lives on the caller's stack for the duration of one call.
#[repr(C)]
struct SyncNode<S, M: Message<S>> {
    slot: Slot<S>,
    msg: UnsafeCell<Option<M>>,
    reply: UnsafeCell<Option<M::Reply>>,
    thread: UnsafeCell<Option<Thread>>,
}

impl<S, M: Message<S>> SyncNode<S, M> {
    fn new(msg: M) -> Self {
        Self {
            slot: Slot::new(
                Self::claim,
                Self::serve,
                Self::hand_over,
                Self::discard,
                false,
            ),
            msg: UnsafeCell::new(Some(msg)),
            reply: UnsafeCell::new(None),
            thread: UnsafeCell::new(None),
        }
    }

    unsafe fn claim(_: *const Slot<S>) -> bool {
        true
    }

    unsafe fn serve(slot: *const Slot<S>, state: &mut S) -> Option<Wake> {
        // SAFETY: `slot` is the first field of a live `SyncNode<S, M>` (repr(C)).
        let node = unsafe { &*(slot as *const Self) };
        // SAFETY: the executor owns msg and reply until it publishes DONE.
        let msg = node.msg.with_mut(|m| unsafe { (*m).take() });
        if let Some(msg) = msg {
            let reply = msg.handle(state);
            // SAFETY: as above.
            node.reply.with_mut(|r| unsafe { *r = Some(reply) });
        }
        match node
            .slot
            .status
            .compare_exchange(WAITING, DONE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => None,
            Err(_) => {
                // PARKED: the owner stored its thread before parking and will not return until
                // it sees DONE, so the node is still valid here.
                // SAFETY: the owner wrote `thread` before its release CAS to PARKED, which our
                // acquire load observed; it does not touch the field again.
                let thread = node.thread.with_mut(|t| unsafe { (*t).take() });
                node.slot.status.store(DONE, Ordering::Release);
                // The node may be gone now; only the taken handle is used, after the turn.
                thread.map(Wake::Thread)
            }
        }
    }

    unsafe fn hand_over(slot: *const Slot<S>, force: bool) -> bool {
        // SAFETY: `slot` is the first field of a live `SyncNode<S, M>` in a taken chain.
        let node = unsafe { &*(slot as *const Self) };
        let status = &node.slot.status;
        // Preferably to a waiter that is still spinning: a parked one takes a wake-up to start.
        match status.compare_exchange(WAITING, HANDOVER, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                count_hand_over(false);
                true
            }
            Err(PARKED) if force => {
                count_hand_over(false);
                // The owner parked and waits for DONE or HANDOVER; only we change its status
                // now. Take its thread handle first: after the store it may run and return.
                // SAFETY: written by the owner before its release CAS to PARKED, observed here.
                let thread = node.thread.with_mut(|t| unsafe { (*t).take() });
                status.store(HANDOVER, Ordering::Release);
                if let Some(thread) = thread {
                    thread.unpark();
                }
                true
            }
            Err(_) => false,
        }
    }

    unsafe fn discard(_: *const Slot<S>) {}

    fn take_msg(&self) -> M {
        // SAFETY: called by the owner while it holds the token for its own node, which the
        // executor never served (acquired directly or handed over).
        match self.msg.with_mut(|m| unsafe { (*m).take() }) {
            Some(m) => m,
            None => unreachable_msg(),
        }
    }

    fn take_reply(&self) -> M::Reply {
        // SAFETY: DONE was observed with acquire ordering after the executor's release store.
        match self.reply.with_mut(|r| unsafe { (*r).take() }) {
            Some(r) => r,
            None => unreachable_msg(),
        }
    }

    /// Waits until the node is DONE or handed over; returns which.
    fn wait(&self) -> u8 {
        let status = &self.slot.status;
        for _ in 0..SPIN_ROUNDS {
            let s = status.load(Ordering::Acquire);
            if s == DONE || s == HANDOVER {
                return s;
            }
            spin();
        }
        for _ in 0..YIELD_ROUNDS {
            let s = status.load(Ordering::Acquire);
            if s == DONE || s == HANDOVER {
                return s;
            }
            yield_now();
        }
        // SAFETY: until the CAS below publishes PARKED, only this thread touches `thread`.
        self.thread
            .with_mut(|t| unsafe { *t = Some(current_thread()) });
        match status.compare_exchange(WAITING, PARKED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => loop {
                park();
                let s = status.load(Ordering::Acquire);
                if s == DONE || s == HANDOVER {
                    return s;
                }
            },
            Err(s) => s,
        }
    }
}

#[cold]
fn unreachable_msg() -> ! {
    // The protocol guarantees each message is taken once and each reply written before DONE;
    // reaching this is a bug in this module, not something user input can cause.
    unreachable!("eyelet shard protocol violated: message or reply taken twice")
}

/// An async caller's node, shared by the future and the mailbox.
#[repr(C)]
struct AsyncNode<S, M: Message<S>> {
    slot: Slot<S>,
    msg: UnsafeCell<Option<M>>,
    reply: UnsafeCell<Option<M::Reply>>,
    waker: Mutex<Option<Waker>>,
}

// SAFETY: the node moves between the future's thread and executors; the message and reply are
// accessed by one side at a time as the status byte dictates; fields are Send when M is.
unsafe impl<S, M: Message<S> + Send> Send for AsyncNode<S, M> where M::Reply: Send {}
// SAFETY: as above.
unsafe impl<S, M: Message<S> + Send> Sync for AsyncNode<S, M> where M::Reply: Send {}

impl<S, M: Message<S>> AsyncNode<S, M> {
    fn new(msg: M) -> Self {
        Self {
            slot: Slot::new(
                Self::claim,
                Self::serve,
                Self::hand_over,
                Self::discard,
                true,
            ),
            msg: UnsafeCell::new(Some(msg)),
            reply: UnsafeCell::new(None),
            waker: Mutex::new(None),
        }
    }

    unsafe fn claim(slot: *const Slot<S>) -> bool {
        // SAFETY: the mailbox holds a reference, so the node is alive.
        let status = unsafe { &(*slot).status };
        status
            .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    unsafe fn serve(slot: *const Slot<S>, state: &mut S) -> Option<Wake> {
        // SAFETY: `slot` came from `Arc::into_raw` of an `Arc<Self>` (repr(C), slot first);
        // this takes back the mailbox's reference, dropped at the end of this function.
        let node = unsafe { Arc::from_raw(slot as *const Self) };
        // SAFETY: TAKEN gives the executor the message and reply until it publishes DONE.
        let msg = node.msg.with_mut(|m| unsafe { (*m).take() });
        if let Some(msg) = msg {
            let reply = msg.handle(state);
            // SAFETY: as above.
            node.reply.with_mut(|r| unsafe { *r = Some(reply) });
        }
        node.slot.status.store(DONE, Ordering::Release);
        let waker = lock(&node.waker).take();
        waker.map(Wake::Task)
    }

    unsafe fn hand_over(slot: *const Slot<S>, force: bool) -> bool {
        // To a task only past MAX_TURN: its executor must first poll it, which takes a wake-up.
        if !force {
            return false;
        }
        // SAFETY: `slot` came from `Arc::into_raw` of an `Arc<Self>`; take back the mailbox's
        // reference so the node outlives our use of it below even if its future completes.
        let node = unsafe { Arc::from_raw(slot as *const Self) };
        match node.slot.status.compare_exchange(
            WAITING,
            HANDOVER,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                count_hand_over(true);
                // The future takes the token (and the chain in `next`) when polled; the waker
                // protocol is the one of DONE (register, then re-check the status).
                let waker = lock(&node.waker).take();
                if let Some(waker) = waker {
                    waker.wake();
                }
                true
            }
            Err(_) => {
                // Cancelled: the node stays in the chain, still holding the mailbox's reference.
                let _ = Arc::into_raw(node);
                false
            }
        }
    }

    unsafe fn discard(slot: *const Slot<S>) {
        // SAFETY: drops the mailbox's reference taken by `Arc::into_raw` at push time.
        drop(unsafe { Arc::from_raw(slot as *const Self) });
    }
}

enum CallState<S, M: Detach<S>> {
    Init(Option<M>),
    Queued(Arc<AsyncNode<S, M::Owned>>),
    Finished,
}

/// Future of an async actor call.
///
/// # Cancel safety
/// Dropping the future at any point leaves nothing behind that could be written into after
/// the drop, and the message is processed at most once:
/// - not yet polled, or waiting for room in the mailbox: nothing was sent;
/// - queued but not yet claimed by an executor: the node is marked cancelled and the executor
///   discards it without processing the message (nothing is recorded);
/// - being processed or processed: the decision is recorded once and its reply dropped.
pub(crate) struct Call<'a, S, M: Detach<S>> {
    cell: &'a ActorCell<S>,
    state: CallState<S, M>,
}

impl<S, M: Detach<S>> Unpin for Call<'_, S, M> {}

impl<S, M: Detach<S>> Call<'_, S, M> {
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<M::Reply> {
        loop {
            match &mut self.state {
                CallState::Init(msg) => {
                    let Some(m) = msg.take() else {
                        self.state = CallState::Finished;
                        return Poll::Pending;
                    };
                    if self.cell.try_acquire() {
                        let reply = self.cell.serve_inline(m);
                        // SAFETY: we hold the token.
                        unsafe { self.cell.run(ptr::null(), 1) };
                        self.state = CallState::Finished;
                        return Poll::Ready(reply);
                    }
                    let queued = self.cell.async_queued.fetch_add(1, Ordering::Relaxed);
                    if queued >= ASYNC_MAILBOX_CAPACITY {
                        // Mailbox full: back off to the runtime and try again.
                        self.cell.async_queued.fetch_sub(1, Ordering::Relaxed);
                        *msg = Some(m);
                        // (a spin hint; under loom a yield, so the model lets others progress)
                        spin();
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    let node = Arc::new(AsyncNode::new(m.detach()));
                    let raw = Arc::into_raw(node.clone()) as *const Slot<S>;
                    // SAFETY: the mailbox owns the reference behind `raw` until the executor
                    // serves or discards the node.
                    match unsafe { self.cell.push_or_acquire(raw) } {
                        Pushed::Acquired => {
                            self.cell.async_queued.fetch_sub(1, Ordering::Relaxed);
                            // SAFETY: the node was not published; take back the reference.
                            drop(unsafe { Arc::from_raw(raw as *const AsyncNode<S, M::Owned>) });
                            // SAFETY: only we know the node; the message is there.
                            let m = node.msg.with_mut(|m| unsafe { (*m).take() });
                            self.state = CallState::Finished;
                            let Some(m) = m else { return Poll::Pending };
                            let reply = self.cell.serve_inline(m);
                            // SAFETY: we hold the token.
                            unsafe { self.cell.run(ptr::null(), 1) };
                            return Poll::Ready(reply);
                        }
                        Pushed::Queued => {
                            for _ in 0..ASYNC_SPIN_ROUNDS {
                                if node.slot.status.load(Ordering::Acquire) == DONE {
                                    break;
                                }
                                spin();
                            }
                            self.state = CallState::Queued(node);
                        }
                    }
                }
                CallState::Queued(node) => {
                    let mut status = node.slot.status.load(Ordering::Acquire);
                    if status != DONE && status != HANDOVER {
                        {
                            let mut slot = lock(&node.waker);
                            match &*slot {
                                Some(w) if w.will_wake(cx.waker()) => {}
                                _ => *slot = Some(cx.waker().clone()),
                            }
                        }
                        status = node.slot.status.load(Ordering::Acquire);
                    }
                    return match status {
                        DONE => Poll::Ready(self.finish()),
                        HANDOVER => Poll::Ready(self.execute_handed_over()),
                        _ => Poll::Pending,
                    };
                }
                CallState::Finished => return Poll::Pending,
            }
        }
    }

    /// The token was handed to this future with the rest of a chain: serve our own message
    /// (no executor touched it), then the chain, as any executor would.
    fn execute_handed_over(&mut self) -> M::Reply {
        let state = std::mem::replace(&mut self.state, CallState::Finished);
        let CallState::Queued(node) = state else {
            unreachable_msg()
        };
        // SAFETY: the hand-over (acquire) gave us the node's `next` field.
        let rest = node.slot.next.with(|p| unsafe { *p });
        // SAFETY: no executor claimed the node (it was handed over), so the message is ours.
        let msg = node.msg.with_mut(|m| unsafe { (*m).take() });
        let Some(msg) = msg else { unreachable_msg() };
        let reply = self.cell.serve_inline(msg);
        // SAFETY: the token and the chain are ours.
        unsafe { self.cell.run(rest, 1) };
        reply
    }

    fn finish(&mut self) -> M::Reply {
        let state = std::mem::replace(&mut self.state, CallState::Finished);
        let CallState::Queued(node) = state else {
            unreachable_msg()
        };
        // SAFETY: DONE observed with acquire ordering; the executor no longer touches the reply.
        match node.reply.with_mut(|r| unsafe { (*r).take() }) {
            Some(r) => r,
            None => unreachable_msg(),
        }
    }
}

impl<S, M: Detach<S>> std::future::Future for Call<'_, S, M> {
    type Output = M::Reply;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Reply> {
        self.get_mut().poll_call(cx)
    }
}

impl<S, M: Detach<S>> Drop for Call<'_, S, M> {
    fn drop(&mut self) {
        if let CallState::Queued(node) = &self.state {
            // Withdraw the message if no executor claimed it yet; otherwise it is (being)
            // processed and the executor's own reference keeps the node alive.
            let withdrawn = node.slot.status.compare_exchange(
                WAITING,
                CANCELLED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if withdrawn == Err(HANDOVER) {
                // We were handed the token: serve the rest of the chain (not our own, cancelled
                // message) so that nobody behind us is stranded.
                // SAFETY: the hand-over (acquire) gave us the token and the node's `next`.
                let rest = node.slot.next.with(|p| unsafe { *p });
                // SAFETY: the token and the chain are ours.
                unsafe { self.cell.run(rest, 0) };
            }
        }
    }
}
