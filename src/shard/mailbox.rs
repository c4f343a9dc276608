//! Caller-runs execution of one actor: run token, mailbox, reply slots, hand-over.
//!
//! This is the only module of the crate with `unsafe` code. An [`ActorCell`] is an actor (state
//! plus a mailbox, one message processed at a time by exactly one executor) that owns no thread:
//! the executor is whichever caller finds the actor idle (flat combining / delegation).
//!
//! # The word
//! One atomic word holds both the run token and the mailbox head:
//!
//! | word             | token        | mailbox                                              |
//! |------------------|--------------|------------------------------------------------------|
//! | `0`              | free         | empty                                                |
//! | `RUNNING`        | held         | empty                                                |
//! | `ptr \| RUNNING` | held         | `ptr` is the newest message                          |
//! | `ptr`            | free         | an *orphaned* chain: async messages only, whose two oldest tasks were woken to take the token |
//!
//! - A caller that finds the token free (`0`, or an orphaned chain) takes it with one
//!   compare-exchange and serves its own message without publishing it, then whatever the
//!   mailbox holds (the fast path on `0`: one compare-exchange to take, one to release).
//! - Otherwise it pushes a node (its message, a reply slot and a status byte) onto the word,
//!   which only succeeds while the token is held, and waits: spins, yields, then parks (sync
//!   callers), or registers a waker (async callers).
//! - A release is a single `RUNNING → 0` compare-exchange that fails exactly when a message
//!   arrived meanwhile, which the releasing executor then takes and serves (no lost wake-up).
//! - An executor serves its own message, then the nodes it takes from the word in arrival
//!   order. A turn is bounded in items (a batch message counts its keys): past
//!   [`COMBINE_BUDGET`] items it hands the token, with the rest of its chain, to the next node
//!   if that is a sync caller still spinning; past [`MAX_TURN`] items (or with its wake list
//!   full) it ends the turn: the token goes to the first *sync* caller of the chain (unparked if
//!   it parked), or, if the chain holds async callers only, the chain is orphaned and its two
//!   oldest tasks woken (two, so that one future held without being polled does not leave the
//!   others waiting for the next caller).
//! - **No sync caller ever waits on a task's scheduling.** The token is never handed to a task:
//!   a task that was woken but is not polled (a busy runtime, or a thread blocked in a sync call
//!   on this very actor) holds nothing. Its message waits in an orphaned chain that any caller,
//!   sync or async (even one that finds the mailbox full), takes over on arrival.
//!
//! # A node's status
//! Each published node carries one status byte. Who may move it, and to what:
//!
//! | from       | to          | by            | edge (model in `loom-tests/`)                           |
//! |------------|-------------|---------------|---------------------------------------------------------|
//! | `WAITING`  | `PARKED`    | sync owner    | `waiting_to_parked`: spun and yielded, about to park     |
//! | `WAITING`  | `DONE`      | executor      | `waiting_to_done`: served a spinning sync caller         |
//! | `PARKED`   | `DONE`      | executor      | `parked_to_done`: served, then unparks the owner         |
//! | `WAITING`  | `HANDOVER`  | executor      | `waiting_to_handover`: token and chain to a spinning sync caller |
//! | `PARKED`   | `HANDOVER`  | executor      | `parked_to_handover`: end of turn, to a parked sync caller |
//! | `WAITING`  | `TAKEN`     | executor      | `waiting_to_taken`: claimed an async node                |
//! | `TAKEN`    | `DONE`      | executor      | `taken_to_done`: reply written, owner's waker woken      |
//! | `WAITING`  | `CANCELLED` | async owner   | `waiting_to_cancelled`: future dropped before a claim; the executor discards the node |
//!
//! `DONE`, `HANDOVER` and `CANCELLED` are final. Sync nodes never become `TAKEN` or
//! `CANCELLED`; async nodes never become `PARKED` or `HANDOVER`. A node's message is moved out
//! and its reply written before its status turns `DONE`; after that store the executor never
//! touches a sync node again (its owner may return and reuse the stack slot at once). Async
//! nodes are reference counted (one reference for the future, one for the mailbox), so a
//! dropped future cannot free a node the executor still holds.
//!
//! The word's own transitions are modelled too: `release_recheck` (a push racing the release),
//! `orphaned_chain_adopted_by_the_woken_task` / `..._by_an_arriving_caller` /
//! `..._in_the_drop_of_a_cancelled_future`, `orphaning_raced_by_a_sync_push` (the orphaning
//! compare-exchange failing), `mailbox_full`, `wake_list_full`, and
//! `drop_cell_with_queued_nodes`.

use std::ptr;
use std::task::{Context, Poll, Waker};

use crate::sync::{
    current_thread, lock, park, spin, yield_now, Arc, AtomicU8, AtomicUsize, Mutex, Ordering,
    Thread, UnsafeCell,
};

/// Items an executor serves in one turn before it hands the token to a spinning sync waiter
/// (research notes: about 4 beat both 1 and 64 under oversubscription).
pub(crate) const COMBINE_BUDGET: usize = if cfg!(eyelet_loom) { 1 } else { 4 };
/// Items an executor serves in one turn at most: past this the turn ends (see the module docs),
/// so no caller's thread serves others for more than one bounded turn, whatever it serves
/// (a batch message counts its keys).
pub(crate) const MAX_TURN: usize = if cfg!(eyelet_loom) { 2 } else { 64 };
/// Busy-wait rounds before a sync waiter starts yielding.
const SPIN_ROUNDS: usize = if cfg!(eyelet_loom) { 1 } else { 64 };
/// `yield_now` rounds before a sync waiter parks.
const YIELD_ROUNDS: usize = if cfg!(eyelet_loom) { 1 } else { 4 };
/// Busy-wait rounds an async caller spends before it returns `Pending`.
const ASYNC_SPIN_ROUNDS: usize = if cfg!(eyelet_loom) { 1 } else { 32 };
/// Async messages one actor's mailbox holds at most; further async callers yield to their
/// runtime until room frees up (checking a counter on its own cache line, not the token's).
/// Sync callers need no bound: each blocks with one node.
pub(crate) const ASYNC_MAILBOX_CAPACITY: usize = if cfg!(eyelet_loom) { 1 } else { 4096 };
/// A caller backing off from a full mailbox looks at the token's word once every this many
/// polls (to take over an orphaned chain); the others read only the mailbox counter.
const FULL_ADOPT_EVERY: usize = if cfg!(eyelet_loom) { 1 } else { 16 };
/// Tasks woken to take over an orphaned chain: its oldest two (so that one future held without
/// being polled does not leave the others waiting for the next caller).
const ORPHAN_WAKES: usize = 2;
/// Wake-ups an executor owes at most: the list keeps room for the orphan wake-ups, and a turn
/// ends when only that room is left (the wake-ups are performed after the token is passed on,
/// outside the abort region). A turn of `MAX_TURN` items owes fewer, so only the loom build,
/// with room for one, ends turns this way.
const WAKE_BATCH: usize = ORPHAN_WAKES + if cfg!(eyelet_loom) { 1 } else { MAX_TURN };

/// Protocol branches a loom model can assert it reached (counted per OS thread: a loom model
/// runs all its threads on the test's thread).
#[cfg(eyelet_loom)]
#[allow(unreachable_pub)]
pub mod reached {
    use std::cell::Cell;

    /// The branches counted.
    #[derive(Clone, Copy, Debug)]
    #[repr(usize)]
    pub enum Branch {
        /// `WAITING → HANDOVER` past the combining budget: the token to a spinning sync caller.
        HandOverSpinning,
        /// The end of a turn: the token to the first sync caller of the chain.
        HandOverAtTurnEnd,
        /// `PARKED → HANDOVER`: the token to a caller that had parked.
        HandOverParked,
        /// `WAITING → PARKED`.
        Parked,
        /// An async node discarded after `WAITING → CANCELLED`.
        Discarded,
        /// A chain of async nodes orphaned at the end of a turn.
        Orphaned,
        /// The orphaning compare-exchange failed (something arrived): decide again.
        OrphanRaced,
        /// Every task woken for an orphaned chain had cancelled: the executor took it back.
        OrphanTakenBack,
        /// An orphaned chain taken over by a woken task.
        AdoptedByTask,
        /// An orphaned chain taken over by an arriving caller.
        AdoptedByCaller,
        /// An orphaned chain taken over by a future being dropped.
        AdoptedInDrop,
        /// An async caller found the mailbox full and backed off.
        MailboxFull,
        /// A turn ended because its wake list was full.
        WakeListFull,
        /// A cell dropped with nodes still queued.
        DroppedWithQueued,
    }

    /// Number of branches.
    pub const COUNT: usize = 14;

    std::thread_local! {
        static COUNTS: Cell<[usize; COUNT]> = const { Cell::new([0; COUNT]) };
    }

    pub(crate) fn hit(b: Branch) {
        COUNTS.with(|c| {
            let mut v = c.get();
            v[b as usize] += 1;
            c.set(v);
        });
    }

    /// How often each branch was reached on this thread so far.
    pub fn counts() -> [usize; COUNT] {
        COUNTS.with(Cell::get)
    }
}

#[cfg(eyelet_loom)]
use reached::{hit, Branch};

#[cfg(not(eyelet_loom))]
macro_rules! hit {
    ($b:ident) => {};
}
#[cfg(eyelet_loom)]
macro_rules! hit {
    ($b:ident) => {
        hit(Branch::$b)
    };
}

const IDLE: usize = 0;
const RUNNING: usize = 1;

// Node status values (see the table in the module docs).
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
    /// Turn units the message takes: its items (the keys of a batch), 1 by default.
    fn cost(&self) -> usize {
        1
    }
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

/// What serving a node produced: the wake-up its owner needs (performed after the turn) and the
/// turn units its message took.
struct Served {
    wake: Option<Wake>,
    cost: usize,
}

/// The operations of one node type: one static table per node type (as tokio's task vtable),
/// reached from the type-erased [`Slot`] every node starts with.
struct Vtable<S: 'static> {
    /// Async nodes are reference counted and never handed the token; sync nodes live on a
    /// blocked caller's stack.
    is_async: bool,
    /// Claims the node for serving: `WAITING → TAKEN` for async nodes (false: cancelled);
    /// always true for sync nodes (their owner cannot withdraw).
    claim: unsafe fn(*const Slot<S>) -> bool,
    /// Moves the message out, handles it and stores the reply, then publishes `DONE`.
    serve: unsafe fn(*const Slot<S>, &mut S) -> Served,
    /// Sync nodes: gives the run token (and the chain in `next`) to the owner if it is still
    /// spinning, or with `force` even if it parked. Async nodes: never (false).
    hand_over: unsafe fn(*const Slot<S>, bool) -> bool,
    /// Async nodes: drops the mailbox's reference to a node nobody claimed (cancelled).
    discard: unsafe fn(*const Slot<S>),
    /// Async nodes: takes one more reference (kept across the publication of an orphaned
    /// chain, which lets another executor serve and release the node meanwhile).
    retain: unsafe fn(*const Slot<S>),
    /// Async nodes: drops the reference `retain` took (the chain was not published after all).
    release: unsafe fn(*const Slot<S>),
    /// Async nodes: the owner's current waker and whether the node was cancelled (both read
    /// under the waker lock), and drops the reference `retain` took.
    waker_and_release: unsafe fn(*const Slot<S>) -> (Option<Waker>, bool),
}

/// The type-erased part of every mailbox node. `#[repr(C)]` and first in each node type, so a
/// `*const Slot<S>` converts back to the concrete node inside the node's own functions.
#[repr(C)]
struct Slot<S: 'static> {
    /// Next node: written by the pusher before publishing, rewritten by the token holder when
    /// it reverses a taken chain into arrival order or unlinks a node from it.
    next: UnsafeCell<*const Slot<S>>,
    status: AtomicU8,
    vtable: &'static Vtable<S>,
}

impl<S: 'static> Slot<S> {
    fn new(vtable: &'static Vtable<S>) -> Self {
        Self {
            next: UnsafeCell::new(ptr::null()),
            status: AtomicU8::new(WAITING),
            vtable,
        }
    }
}

/// An actor's state and mailbox, executed by its callers.
///
/// `repr(C)`: the word first and the state right after it, so the state's first fields share
/// the word's cache line (see [`ShardActor`](crate::shard::ShardActor)).
#[repr(C)]
pub(crate) struct ActorCell<S: 'static> {
    /// The run token and the mailbox head (see the module docs). It shares its cache line with
    /// the start of the state: measured on a hot key with 2 and 4 callers, a line of its own was
    /// no faster (within the noise of interleaved rounds), so the cell stays small.
    word: AtomicUsize,
    state: UnsafeCell<S>,
    /// Async nodes currently waiting in the mailbox (bounded by [`ASYNC_MAILBOX_CAPACITY`]); on
    /// its own cache line, so async callers facing a full mailbox poll it without touching the
    /// token's line.
    async_queued: crossbeam_utils::CachePadded<AtomicUsize>,
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

/// Wake-ups collected during one turn, performed once the token is passed on.
///
/// Slots past `len` are uninitialized: a turn that owes no wake-up (spinning waiters, the common
/// case under contention) writes nothing here, instead of initializing the whole list.
struct Wakes {
    pending: [std::mem::MaybeUninit<Wake>; WAKE_BATCH],
    /// Slots `..len` are initialized.
    len: usize,
}

impl Wakes {
    fn new() -> Self {
        Self {
            pending: [const { std::mem::MaybeUninit::uninit() }; WAKE_BATCH],
            len: 0,
        }
    }

    /// Whether only the room kept for the orphan wake-ups is left.
    #[inline]
    fn is_full(&self) -> bool {
        self.len + ORPHAN_WAKES >= WAKE_BATCH
    }

    /// Adds a wake-up; turns end while room for the orphan wake-ups is left ([`is_full`]), so
    /// the list never overflows (were it to, the wake-up would be performed at once rather than
    /// lost).
    ///
    /// [`is_full`]: Self::is_full
    #[inline]
    fn push(&mut self, w: Wake) {
        match self.pending.get_mut(self.len) {
            Some(slot) => {
                slot.write(w);
                self.len += 1;
            }
            None => w.wake(),
        }
    }

    /// Performs every wake-up. A waker that panics does not cost the others theirs: all are
    /// woken, then the first panic is resumed (unless this thread is already unwinding, e.g. a
    /// future dropped during a panic: then it is dropped, not turned into an abort).
    fn flush(&mut self) {
        let len = std::mem::replace(&mut self.len, 0);
        let mut panic = None;
        for slot in &self.pending[..len] {
            // SAFETY: slots `..len` were initialized by `push`; `len` was reset above, so each
            // is read out exactly once (a panic below leaves none to be dropped twice).
            let w = unsafe { slot.assume_init_read() };
            let woken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
            if let Err(p) = woken {
                panic.get_or_insert(p);
            }
        }
        if let Some(p) = panic {
            if !std::thread::panicking() {
                std::panic::resume_unwind(p);
            }
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        // Only reached with wake-ups left if a turn unwound (the process is aborting then);
        // drop them rather than leak.
        for slot in &mut self.pending[..self.len] {
            // SAFETY: slots `..len` are initialized and dropped once.
            unsafe { slot.assume_init_drop() };
        }
    }
}

/// Aborts the process if dropped during a panic. Held over every region where unwinding would
/// break the protocol: from taking the run token until it is released or passed on (the token
/// would stay held and every later caller hang), and while a caller's stack node is published
/// (an executor would write into a dead frame).
struct AbortOnUnwind;

impl AbortOnUnwind {
    /// Leaves the region normally.
    #[inline(always)]
    fn disarm(self) {
        std::mem::forget(self);
    }
}

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
    /// The token was free: the caller now holds it and its node was not published.
    Acquired,
}

/// A chain of nodes in arrival order, owned by the token holder.
type Chain<S> = *const Slot<S>;

impl<S: 'static> ActorCell<S> {
    /// A new idle actor owning `state`.
    pub(crate) fn new(state: S) -> Self {
        Self {
            word: AtomicUsize::new(IDLE),
            state: UnsafeCell::new(state),
            async_queued: crossbeam_utils::CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// Takes the token if the actor is idle (the fast path).
    #[inline]
    fn try_acquire(&self) -> bool {
        self.word
            .compare_exchange(IDLE, RUNNING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the token of an orphaned chain (free token, non-empty mailbox), if that is what
    /// the word holds. The chain stays in the word for the new holder's turn to take.
    fn try_adopt(&self) -> bool {
        let cur = self.word.load(Ordering::Relaxed);
        cur != IDLE
            && cur & RUNNING == 0
            && self
                .word
                .compare_exchange(cur, cur | RUNNING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    /// Handles `msg` on the state. The caller holds the token (and its abort guard).
    #[inline(always)]
    fn serve_inline<M: Message<S>>(&self, msg: M) -> M::Reply {
        // SAFETY: the caller holds the run token, so no other thread reads or writes the state
        // until the token is released or passed on (with release ordering).
        self.state.with_mut(|s| msg.handle(unsafe { &mut *s }))
    }

    /// Pushes `slot` onto the mailbox, or takes the token if it is free (idle or orphaned).
    ///
    /// # Safety
    /// `slot` must stay valid until its status turns `DONE` or `HANDOVER`, or, for async nodes,
    /// carry a reference the executor releases.
    unsafe fn push_or_acquire(&self, slot: *const Slot<S>) -> Pushed {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            if cur & RUNNING == 0 {
                // Free: idle, or an orphaned chain this caller now adopts.
                match self.word.compare_exchange_weak(
                    cur,
                    cur | RUNNING,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        if cur != IDLE {
                            hit!(AdoptedByCaller);
                        }
                        return Pushed::Acquired;
                    }
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

    /// Releases the token after serving one's own request (`served` items): the uncontended
    /// case is a single compare-exchange, inline; anything in the mailbox (queued meanwhile, or
    /// an orphaned chain just adopted) is served out of line. Leaves the caller's abort region.
    ///
    /// # Safety
    /// The caller holds the run token and has no taken chain.
    #[inline(always)]
    unsafe fn release(&self, served: usize, turn: AbortOnUnwind) {
        if self
            .word
            .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // SAFETY: we hold the token.
            unsafe { self.run(ptr::null(), served, turn) };
        } else {
            turn.disarm();
        }
    }

    /// Serves `chain` (arrival order) and whatever arrives, until the token is released or
    /// passed on; leaves the caller's abort region, then performs the wake-ups owed (foreign
    /// code, run without the token). The caller has already served `served` items.
    ///
    /// # Safety
    /// The caller holds the run token; `chain` is null or a chain taken from this mailbox.
    #[inline(never)]
    unsafe fn run(&self, chain: Chain<S>, served: usize, turn: AbortOnUnwind) {
        let mut wakes = Wakes::new();
        // SAFETY: forwarded from the caller.
        unsafe { self.run_turn(chain, served, &mut wakes) };
        turn.disarm();
        wakes.flush();
    }

    /// The body of [`run`](Self::run).
    ///
    /// # Safety
    /// As for `run`.
    unsafe fn run_turn(&self, mut chain: Chain<S>, mut served: usize, wakes: &mut Wakes) {
        loop {
            while !chain.is_null() {
                let node = chain;
                // SAFETY: nodes in a taken chain stay valid until completed (see
                // `push_or_acquire`) and the executor owns their `next` field now. Read it
                // before completing: the owner may reuse the node right after.
                let (next, vt) = unsafe { ((*node).next.with(|p| *p), (*node).vtable) };
                if served >= MAX_TURN || wakes.is_full() {
                    if wakes.is_full() {
                        hit!(WakeListFull);
                    }
                    // SAFETY: `node` heads the untaken rest of the chain; we hold the token.
                    unsafe { self.end_turn(node, wakes) };
                    return;
                }
                if served >= COMBINE_BUDGET {
                    // SAFETY: `node` heads the rest of the chain, its `next` links the rest;
                    // handing over passes the token and that chain to its owner.
                    if unsafe { (vt.hand_over)(node, false) } {
                        hit!(HandOverSpinning);
                        return;
                    }
                }
                // SAFETY: the node is valid and claimed at most once, here.
                if unsafe { (vt.claim)(node) } {
                    if vt.is_async {
                        // Claimed: it leaves the mailbox's count (a cancel would have instead).
                        self.async_queued.fetch_sub(1, Ordering::Relaxed);
                    }
                    // SAFETY: token held, so the state is exclusively ours.
                    let s = self
                        .state
                        .with_mut(|s| unsafe { (vt.serve)(node, &mut *s) });
                    if let Some(w) = s.wake {
                        wakes.push(w);
                    }
                    served = served.saturating_add(s.cost.max(1));
                } else {
                    hit!(Discarded);
                    // SAFETY: a cancelled async node; the mailbox's reference is dropped once.
                    unsafe { (vt.discard)(node) };
                    // Discards count too: a stream of cancellations cannot stretch a turn.
                    served = served.saturating_add(1);
                }
                chain = next;
            }
            match self
                .word
                .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(_) => {
                    // SAFETY: the chain is taken from this mailbox by the token holder.
                    chain = unsafe { self.take_arrivals() };
                }
            }
        }
    }

    /// Takes everything pushed onto the word (the token stays held), in arrival order.
    ///
    /// # Safety
    /// The caller holds the run token.
    unsafe fn take_arrivals(&self) -> Chain<S> {
        let head = self.word.swap(RUNNING, Ordering::Acquire);
        // SAFETY: the chain was just taken from this mailbox by the token holder.
        unsafe { reverse((head & !RUNNING) as *const Slot<S>) }
    }

    /// Ends a turn with `rest` (arrival order) and whatever arrives still to serve: the token
    /// goes to the first sync caller among them, with all the others in its chain; if they are
    /// all async, they are orphaned (the token freed, the chain left in the word) and the tasks
    /// of the [`ORPHAN_WAKES`] oldest woken to take over. Never to a task: no sync caller may
    /// wait on one.
    ///
    /// # Safety
    /// The caller holds the run token; `rest` is a chain taken from this mailbox.
    unsafe fn end_turn(&self, mut rest: Chain<S>, wakes: &mut Wakes) {
        loop {
            // SAFETY: the token holder owns the taken chain.
            rest = unsafe { append(rest, self.take_arrivals()) };
            // SAFETY: as above.
            let (rest_without, sync) = unsafe { unlink_first_sync(rest) };
            if !sync.is_null() {
                // SAFETY: `sync` is a live sync node we own the `next` of; give it the rest.
                unsafe {
                    (*sync).next.with_mut(|p| *p = rest_without);
                    let handed = ((*sync).vtable.hand_over)(sync, true);
                    debug_assert!(handed, "a forced hand-over to a sync node cannot fail");
                }
                hit!(HandOverAtTurnEnd);
                return;
            }
            rest = rest_without;
            // Cancelled nodes need no one to take over: drop them now.
            // SAFETY: the token holder owns the chain.
            rest = unsafe { discard_cancelled(rest) };
            if rest.is_null() {
                match self
                    .word
                    .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return,
                    Err(_) => continue,
                }
            }
            // Async nodes only: orphan them. Keep the oldest ones alive across the publication
            // (an arriving caller may serve and release them at once), then wake their tasks.
            let mut woken: [Chain<S>; ORPHAN_WAKES] = [ptr::null(); ORPHAN_WAKES];
            let mut node = rest;
            for slot in woken.iter_mut() {
                if node.is_null() {
                    break;
                }
                // SAFETY: `node` is a live async node of the chain we own.
                unsafe {
                    ((*node).vtable.retain)(node);
                    *slot = node;
                    node = (*node).next.with(|p| *p);
                }
            }
            // SAFETY: the token holder owns the chain.
            let lifo = unsafe { reverse(rest) };
            match self.word.compare_exchange(
                RUNNING,
                lifo as usize,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    hit!(Orphaned);
                    let mut live = false;
                    for &n in woken.iter().filter(|n| !n.is_null()) {
                        // SAFETY: the reference taken above keeps `n` alive; it is dropped here.
                        let (waker, cancelled) = unsafe { ((*n).vtable.waker_and_release)(n) };
                        if !cancelled {
                            live = true;
                            if let Some(w) = waker {
                                wakes.push(Wake::Task(w));
                            }
                        }
                    }
                    // A woken future that was dropped meanwhile may have looked at the word
                    // before the chain was orphaned: if all of them were, nobody would take it
                    // over. Take it back then (unless someone already did) and try again.
                    if !live && self.try_adopt() {
                        hit!(OrphanTakenBack);
                        rest = ptr::null();
                        continue;
                    }
                    return;
                }
                Err(_) => {
                    // Something arrived: take it and decide again. The chain was not published;
                    // we still own it. Drop only our extra references (the owners' wakers stay
                    // registered: a node served later must still wake its task).
                    hit!(OrphanRaced);
                    // SAFETY: as above.
                    unsafe {
                        rest = reverse(lifo);
                        for &n in woken.iter().filter(|n| !n.is_null()) {
                            ((*n).vtable.release)(n);
                        }
                    }
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
            let turn = AbortOnUnwind;
            let cost = msg.cost();
            let reply = self.serve_inline(msg);
            // SAFETY: we hold the token.
            unsafe { self.release(cost, turn) };
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
        // From the push until DONE or HANDOVER an executor may write into `node`, and after
        // HANDOVER or an acquisition we hold the token: this frame must not unwind meanwhile.
        let guard = AbortOnUnwind;
        // SAFETY: `node` lives on this stack frame, which does not return before the node's
        // status turns DONE or HANDOVER (both waited for below).
        let handed = match unsafe { self.push_or_acquire(slot) } {
            // Never published (a stale `next` from a lost push attempt must be ignored).
            Pushed::Acquired => None,
            Pushed::Queued => Some(node.wait()),
        };
        let rest = match handed {
            Some(DONE) => {
                guard.disarm();
                return node.take_reply();
            }
            // HANDOVER: the token and the rest of the chain (in `next`) are ours.
            // SAFETY: the hand-over (acquire) gave us the node's `next` field.
            Some(_) => node.slot.next.with(|p| unsafe { *p }),
            None => ptr::null(),
        };
        // We hold the token; no executor touched our message.
        let msg = node.take_msg();
        let cost = msg.cost();
        let reply = self.serve_inline(msg);
        // SAFETY: the token (and the chain, if any) are ours.
        unsafe {
            if rest.is_null() {
                self.release(cost, guard);
            } else {
                self.run(rest, cost, guard);
            }
        }
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

    /// Whether the word holds an orphaned chain (free token, non-empty mailbox).
    #[inline]
    fn orphaned(&self) -> bool {
        let w = self.word.load(Ordering::Acquire);
        w != IDLE && w & RUNNING == 0
    }
}

impl<S: 'static> Drop for ActorCell<S> {
    fn drop(&mut self) {
        // With `&mut self` no executor or caller is active, so the mailbox can hold only async
        // nodes whose futures were forgotten (or an orphaned chain of them); release the
        // mailbox's references.
        let head = self.word.swap(IDLE, Ordering::Acquire);
        // SAFETY: the chain belongs to this mailbox and nobody else can take it now.
        let mut chain = unsafe { reverse((head & !RUNNING) as *const Slot<S>) };
        if !chain.is_null() {
            hit!(DroppedWithQueued);
        }
        while !chain.is_null() {
            // SAFETY: valid until discarded; read `next` first.
            let next = unsafe { (*chain).next.with(|p| *p) };
            // SAFETY: each queued node is discarded exactly once. A live sync node cannot be
            // here (its owner borrows the cell), so every node is async.
            unsafe {
                if (*chain).vtable.is_async && (*chain).status.load(Ordering::Acquire) != CANCELLED
                {
                    // Not cancelled: the future was leaked; mark it so it never waits forever.
                    (*chain).status.store(CANCELLED, Ordering::Release);
                }
                ((*chain).vtable.discard)(chain);
            }
            chain = next;
        }
    }
}

/// Reverses a chain taken from the word (newest first) into arrival order, or back.
///
/// # Safety
/// The chain must be owned by the token holder (taken from a mailbox, or not yet published).
unsafe fn reverse<S: 'static>(mut head: Chain<S>) -> Chain<S> {
    let mut prev: Chain<S> = ptr::null();
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

/// `a` followed by `b` (both arrival order).
///
/// # Safety
/// As for [`reverse`].
unsafe fn append<S: 'static>(a: Chain<S>, b: Chain<S>) -> Chain<S> {
    if a.is_null() {
        return b;
    }
    let mut tail = a;
    loop {
        // SAFETY: owned chain.
        let next = unsafe { (*tail).next.with(|p| *p) };
        if next.is_null() {
            // SAFETY: owned chain.
            unsafe { (*tail).next.with_mut(|p| *p = b) };
            return a;
        }
        tail = next;
    }
}

/// Splits the first sync node off `chain`: `(chain without it, the node or null)`.
///
/// # Safety
/// As for [`reverse`].
unsafe fn unlink_first_sync<S: 'static>(chain: Chain<S>) -> (Chain<S>, Chain<S>) {
    let mut prev: Chain<S> = ptr::null();
    let mut cur = chain;
    while !cur.is_null() {
        // SAFETY: owned chain.
        let (next, is_async) = unsafe { ((*cur).next.with(|p| *p), (*cur).vtable.is_async) };
        if !is_async {
            if prev.is_null() {
                return (next, cur);
            }
            // SAFETY: owned chain.
            unsafe { (*prev).next.with_mut(|p| *p = next) };
            return (chain, cur);
        }
        prev = cur;
        cur = next;
    }
    (chain, ptr::null())
}

/// Drops the cancelled nodes of an all-async `chain` (their futures are gone; nobody waits on
/// them), returning the rest.
///
/// # Safety
/// As for [`reverse`]; every node of `chain` is async.
unsafe fn discard_cancelled<S: 'static>(chain: Chain<S>) -> Chain<S> {
    let mut head = chain;
    let mut prev: Chain<S> = ptr::null();
    let mut cur = chain;
    while !cur.is_null() {
        // SAFETY: owned chain; the status is read with acquire to see the cancel.
        let (next, cancelled) = unsafe {
            (
                (*cur).next.with(|p| *p),
                (*cur).status.load(Ordering::Acquire) == CANCELLED,
            )
        };
        if cancelled {
            if prev.is_null() {
                head = next;
            } else {
                // SAFETY: owned chain.
                unsafe { (*prev).next.with_mut(|p| *p = next) };
            }
            hit!(Discarded);
            // SAFETY: CANCELLED is final and nobody else holds the mailbox's reference.
            unsafe { ((*cur).vtable.discard)(cur) };
        } else {
            prev = cur;
        }
        cur = next;
    }
    head
}

/// An async call whose future is leaked (never polled again, never dropped): its node, as the
/// future would hold it. For the loom model of dropping a cell with queued nodes.
#[cfg(eyelet_loom)]
pub(crate) struct Leaked<S: 'static, M: Message<S>>(Arc<AsyncNode<S, M>>);

#[cfg(eyelet_loom)]
impl<S: 'static, M: Message<S>> Leaked<S, M> {
    /// Whether an executor served the message.
    pub(crate) fn is_done(&self) -> bool {
        self.0.slot.status.load(Ordering::Acquire) == DONE
    }

    /// Whether the message was withdrawn (by the cell's drop: nobody ever served it).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.slot.status.load(Ordering::Acquire) == CANCELLED
    }
}

#[cfg(eyelet_loom)]
impl<S: 'static> ActorCell<S> {
    /// Sends `msg` as an async caller's first poll does (served inline if the token is free,
    /// queued otherwise), then leaves it as a leaked future would.
    pub(crate) fn call_leaked<M>(&self, msg: M) -> Leaked<S, M>
    where
        M: Message<S> + Send + 'static,
        M::Reply: Send,
    {
        self.async_queued.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(AsyncNode::new(msg));
        let raw = Arc::into_raw(node.clone()) as *const Slot<S>;
        // SAFETY: as in `Call::poll_call`.
        if let Pushed::Acquired = unsafe { self.push_or_acquire(raw) } {
            self.async_queued.fetch_sub(1, Ordering::Relaxed);
            let turn = AbortOnUnwind;
            // SAFETY: the node was not published, so it is WAITING and ours to claim; serving
            // it releases the mailbox's reference.
            unsafe {
                let mut cost = 0;
                if AsyncNode::<S, M>::claim(raw) {
                    cost = self
                        .state
                        .with_mut(|s| AsyncNode::<S, M>::serve(raw, &mut *s))
                        .cost;
                }
                self.release(cost, turn);
            }
        }
        Leaked(node)
    }
}

/// A sync caller's node: lives on the caller's stack for the duration of one call.
#[repr(C)]
struct SyncNode<S: 'static, M: Message<S>> {
    slot: Slot<S>,
    msg: UnsafeCell<Option<M>>,
    reply: UnsafeCell<Option<M::Reply>>,
    thread: UnsafeCell<Option<Thread>>,
}

impl<S: 'static, M: Message<S>> SyncNode<S, M> {
    const VTABLE: Vtable<S> = Vtable {
        is_async: false,
        claim: Self::claim,
        serve: Self::serve,
        hand_over: Self::hand_over,
        discard: no_op,
        retain: no_op,
        release: no_op,
        waker_and_release: no_waker,
    };

    fn new(msg: M) -> Self {
        Self {
            slot: Slot::new(&Self::VTABLE),
            msg: UnsafeCell::new(Some(msg)),
            reply: UnsafeCell::new(None),
            thread: UnsafeCell::new(None),
        }
    }

    unsafe fn claim(_: *const Slot<S>) -> bool {
        true
    }

    unsafe fn serve(slot: *const Slot<S>, state: &mut S) -> Served {
        // SAFETY: `slot` is the first field of a live `SyncNode<S, M>` (repr(C)).
        let node = unsafe { &*(slot as *const Self) };
        // SAFETY: the executor owns msg and reply until it publishes DONE.
        let msg = node.msg.with_mut(|m| unsafe { (*m).take() });
        let mut cost = 1;
        if let Some(msg) = msg {
            cost = msg.cost();
            let reply = msg.handle(state);
            // SAFETY: as above.
            node.reply.with_mut(|r| unsafe { *r = Some(reply) });
        }
        let wake = match node.slot.status.compare_exchange(
            WAITING,
            DONE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
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
        };
        Served { wake, cost }
    }

    unsafe fn hand_over(slot: *const Slot<S>, force: bool) -> bool {
        // SAFETY: `slot` is the first field of a live `SyncNode<S, M>` in a taken chain.
        let node = unsafe { &*(slot as *const Self) };
        let status = &node.slot.status;
        // Preferably to a waiter that is still spinning: a parked one takes a wake-up to start.
        match status.compare_exchange(WAITING, HANDOVER, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(PARKED) if force => {
                hit!(HandOverParked);
                // The owner parked and waits for DONE or HANDOVER; only we change its status
                // now. Take its thread handle first: after the store it may run and return.
                // SAFETY: written by the owner before its release CAS to PARKED, observed here.
                let thread = node.thread.with_mut(|t| unsafe { (*t).take() });
                status.store(HANDOVER, Ordering::Release);
                if let Some(thread) = thread {
                    // A thread's unpark cannot fail or run foreign code.
                    thread.unpark();
                }
                true
            }
            Err(_) => false,
        }
    }

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
            Ok(_) => {
                hit!(Parked);
                loop {
                    park();
                    let s = status.load(Ordering::Acquire);
                    if s == DONE || s == HANDOVER {
                        return s;
                    }
                }
            }
            Err(s) => s,
        }
    }
}

unsafe fn no_op<S: 'static>(_: *const Slot<S>) {}

unsafe fn no_waker<S: 'static>(_: *const Slot<S>) -> (Option<Waker>, bool) {
    (None, false)
}

#[cold]
fn unreachable_msg() -> ! {
    // The protocol guarantees each message is taken once and each reply written before DONE;
    // reaching this is a bug in this module, not something user input can cause.
    unreachable!("eyelet shard protocol violated: message or reply taken twice")
}

/// An async caller's node, shared by the future and the mailbox.
#[repr(C)]
struct AsyncNode<S: 'static, M: Message<S>> {
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

impl<S: 'static, M: Message<S>> AsyncNode<S, M> {
    const VTABLE: Vtable<S> = Vtable {
        is_async: true,
        claim: Self::claim,
        serve: Self::serve,
        hand_over: Self::hand_over,
        discard: Self::discard,
        retain: Self::retain,
        release: Self::release,
        waker_and_release: Self::waker_and_release,
    };

    fn new(msg: M) -> Self {
        Self {
            slot: Slot::new(&Self::VTABLE),
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

    unsafe fn serve(slot: *const Slot<S>, state: &mut S) -> Served {
        // SAFETY: `slot` came from `Arc::into_raw` of an `Arc<Self>` (repr(C), slot first);
        // this takes back the mailbox's reference, dropped at the end of this function.
        let node = unsafe { Arc::from_raw(slot as *const Self) };
        // SAFETY: TAKEN gives the executor the message and reply until it publishes DONE.
        let msg = node.msg.with_mut(|m| unsafe { (*m).take() });
        let mut cost = 1;
        if let Some(msg) = msg {
            cost = msg.cost();
            let reply = msg.handle(state);
            // SAFETY: as above.
            node.reply.with_mut(|r| unsafe { *r = Some(reply) });
        }
        node.slot.status.store(DONE, Ordering::Release);
        let wake = lock(&node.waker).take().map(Wake::Task);
        Served { wake, cost }
    }

    unsafe fn hand_over(_: *const Slot<S>, _: bool) -> bool {
        // Never to a task: its thread may be the one waiting for the token.
        false
    }

    unsafe fn discard(slot: *const Slot<S>) {
        // SAFETY: drops the mailbox's reference taken by `Arc::into_raw` at push time.
        drop(unsafe { Arc::from_raw(slot as *const Self) });
    }

    unsafe fn retain(slot: *const Slot<S>) {
        // SAFETY: the node is alive (the mailbox holds a reference); one more is leaked here
        // and taken back by `waker_and_release`.
        let node = unsafe { Arc::from_raw(slot as *const Self) };
        let extra = node.clone();
        let _ = Arc::into_raw(node);
        let _ = Arc::into_raw(extra);
    }

    unsafe fn release(slot: *const Slot<S>) {
        // SAFETY: takes back (and drops) the reference `retain` leaked.
        drop(unsafe { Arc::from_raw(slot as *const Self) });
    }

    unsafe fn waker_and_release(slot: *const Slot<S>) -> (Option<Waker>, bool) {
        // SAFETY: takes back the reference `retain` leaked.
        let node = unsafe { Arc::from_raw(slot as *const Self) };
        // Read after the chain was published, under the lock the future registers its waker
        // and cancels under: a future that registered a new waker (or cancelled) after this
        // section looks at the word after it, and sees the orphan.
        let mut waker = lock(&node.waker);
        let cancelled = node.slot.status.load(Ordering::Acquire) == CANCELLED;
        (waker.take(), cancelled)
    }
}

enum CallState<S: 'static, M: Detach<S>> {
    Init(Option<M>),
    /// The mailbox was full: backing off, re-polled by its own wake-ups.
    Full {
        msg: Option<M>,
        polls: usize,
    },
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
pub(crate) struct Call<'a, S: 'static, M: Detach<S>> {
    cell: &'a ActorCell<S>,
    state: CallState<S, M>,
}

impl<S, M: Detach<S>> Unpin for Call<'_, S, M> {}

impl<S: 'static, M: Detach<S>> Call<'_, S, M> {
    fn poll_call(&mut self, cx: &mut Context<'_>) -> Poll<M::Reply> {
        loop {
            match &mut self.state {
                CallState::Init(msg) => {
                    let Some(m) = msg.take() else {
                        self.state = CallState::Finished;
                        return Poll::Pending;
                    };
                    if self.cell.try_acquire() {
                        self.state = CallState::Finished;
                        return Poll::Ready(self.execute(m));
                    }
                    // A full mailbox is seen on the counter's own cache line, not the token's.
                    let queued = self.cell.async_queued.fetch_add(1, Ordering::Relaxed);
                    if queued >= ASYNC_MAILBOX_CAPACITY {
                        hit!(MailboxFull);
                        self.cell.async_queued.fetch_sub(1, Ordering::Relaxed);
                        self.state = CallState::Full {
                            msg: Some(m),
                            polls: 0,
                        };
                        continue;
                    }
                    let node = Arc::new(AsyncNode::new(m.detach()));
                    let raw = Arc::into_raw(node.clone()) as *const Slot<S>;
                    // SAFETY: the mailbox owns the reference behind `raw` until the executor
                    // serves or discards the node.
                    match unsafe { self.cell.push_or_acquire(raw) } {
                        Pushed::Acquired => {
                            self.cell.async_queued.fetch_sub(1, Ordering::Relaxed);
                            let turn = AbortOnUnwind;
                            // SAFETY: the node was not published; take back the reference.
                            drop(unsafe { Arc::from_raw(raw as *const AsyncNode<S, M::Owned>) });
                            // SAFETY: only we know the node; the message is there.
                            let m = node.msg.with_mut(|m| unsafe { (*m).take() });
                            self.state = CallState::Finished;
                            let Some(m) = m else {
                                // unreachable: the message was just stored
                                // SAFETY: we hold the token.
                                unsafe { self.cell.release(0, turn) };
                                return Poll::Pending;
                            };
                            let cost = m.cost();
                            let reply = self.cell.serve_inline(m);
                            // SAFETY: we hold the token (an orphaned chain, if any, is in the
                            // word and taken by the turn).
                            unsafe { self.cell.release(cost, turn) };
                            return Poll::Ready(reply);
                        }
                        Pushed::Queued => {
                            for _ in 0..ASYNC_SPIN_ROUNDS {
                                if node.slot.status.load(Ordering::Acquire) == DONE
                                    || self.cell.orphaned()
                                {
                                    break;
                                }
                                spin();
                            }
                            self.state = CallState::Queued(node);
                        }
                    }
                }
                CallState::Full { msg, polls } => {
                    // Busy re-polls read the counter on its own cache line; the token's line is
                    // looked at only now and then, to take over an orphaned chain (any arriving
                    // caller does: never wait on the woken tasks being polled).
                    let full =
                        self.cell.async_queued.load(Ordering::Relaxed) >= ASYNC_MAILBOX_CAPACITY;
                    if *polls % FULL_ADOPT_EVERY == 0 && self.cell.try_adopt() {
                        hit!(AdoptedByCaller);
                        let Some(m) = msg.take() else {
                            // unreachable: the message is kept while backing off
                            // SAFETY: we hold the token.
                            unsafe { self.cell.release(0, AbortOnUnwind) };
                            self.state = CallState::Finished;
                            return Poll::Pending;
                        };
                        self.state = CallState::Finished;
                        return Poll::Ready(self.execute(m));
                    }
                    if !full {
                        // Room again: start over.
                        self.state = CallState::Init(msg.take());
                        continue;
                    }
                    *polls += 1;
                    // Back off to the runtime and try again (under loom the spin hint is a
                    // yield, which lets the model run the executor).
                    spin();
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                CallState::Queued(node) => {
                    let mut status = node.slot.status.load(Ordering::Acquire);
                    if status != DONE {
                        {
                            let mut slot = lock(&node.waker);
                            match &*slot {
                                Some(w) if w.will_wake(cx.waker()) => {}
                                _ => *slot = Some(cx.waker().clone()),
                            }
                        }
                        status = node.slot.status.load(Ordering::Acquire);
                    }
                    if status == WAITING && self.cell.try_adopt() {
                        // Our chain was orphaned (we were woken for it, or we saw it): take the
                        // token and serve it, our own message included.
                        hit!(AdoptedByTask);
                        let turn = AbortOnUnwind;
                        // SAFETY: we hold the token; the chain is in the word.
                        unsafe { self.cell.release(0, turn) };
                        status = node.slot.status.load(Ordering::Acquire);
                    }
                    return if status == DONE {
                        Poll::Ready(self.finish())
                    } else {
                        Poll::Pending
                    };
                }
                CallState::Finished => return Poll::Pending,
            }
        }
    }

    /// Serves `m` holding the token just taken, then what the mailbox holds.
    fn execute(&self, m: M) -> M::Reply {
        let turn = AbortOnUnwind;
        let cost = m.cost();
        let reply = self.cell.serve_inline(m);
        // SAFETY: we hold the token.
        unsafe { self.cell.release(cost, turn) };
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

impl<S: 'static, M: Detach<S>> std::future::Future for Call<'_, S, M> {
    type Output = M::Reply;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<M::Reply> {
        self.get_mut().poll_call(cx)
    }
}

impl<S: 'static, M: Detach<S>> Drop for Call<'_, S, M> {
    fn drop(&mut self) {
        if let CallState::Queued(node) = &self.state {
            // Withdraw the message if no executor claimed it yet; otherwise it is (being)
            // processed and the executor's own reference keeps the node alive. Under the waker
            // lock, so that an executor orphaning our chain either sees the cancel or is seen.
            let withdrawn = {
                let _registration = lock(&node.waker);
                node.slot.status.compare_exchange(
                    WAITING,
                    CANCELLED,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
            };
            if withdrawn.is_ok() {
                // It no longer takes room in the mailbox.
                self.cell.async_queued.fetch_sub(1, Ordering::Relaxed);
                // We may have been the task woken to take over an orphaned chain: do it now,
                // so that nobody behind us waits for the next caller.
                if self.cell.try_adopt() {
                    hit!(AdoptedInDrop);
                    let turn = AbortOnUnwind;
                    // SAFETY: we hold the token; the chain is in the word.
                    unsafe { self.cell.release(0, turn) };
                }
            }
        }
    }
}

#[cfg(all(test, not(eyelet_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;
    use std::sync::Arc as StdArc;
    use std::task::Wake as TaskWake;

    /// Counts its wake-ups; panics on wake if `panics`.
    struct Counting {
        woken: StdAtomicUsize,
        panics: bool,
    }

    impl TaskWake for Counting {
        fn wake(self: StdArc<Self>) {
            self.woken.fetch_add(1, Ordering::Relaxed);
            assert!(!self.panics, "a waker that panics");
        }
    }

    /// A panicking waker does not cost the other callers of the turn their wake-ups (issue 7.7:
    /// the first panic used to abandon the rest of the list).
    #[test]
    fn a_panicking_waker_does_not_lose_the_other_wake_ups() {
        let counters: Vec<StdArc<Counting>> = (0..5)
            .map(|i| {
                StdArc::new(Counting {
                    woken: StdAtomicUsize::new(0),
                    panics: i == 1 || i == 3,
                })
            })
            .collect();
        let mut wakes = Wakes::new();
        for c in &counters {
            wakes.push(Wake::Task(Waker::from(c.clone())));
        }
        let flushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wakes.flush()));
        assert!(flushed.is_err(), "the panic is not swallowed");
        for c in &counters {
            assert_eq!(c.woken.load(Ordering::Relaxed), 1, "every waker woken once");
        }
        assert_eq!(wakes.len, 0);
    }
}
