//! The Redis batcher actor: coalesces concurrent calls into few script calls.
//!
//! Callers send [`BatcherCommand`]s through a mailbox bounded in *operations* (a caller waits
//! for room for all of its message's operations, within its deadline) and await a oneshot reply
//! per operation. The actor (a tokio task owning the connection) drains what is queued, up to
//! [`MAX_BATCH_OPS`] operations (under load it first yields once so that the callers its last
//! reply woke can join), groups the operations per hash slot (one group on a single server) and
//! cuts each group into script calls by operations: a call takes new keys while it holds fewer
//! than [`MAX_OPS_PER_CALL`] operations, and more operations of its keys up to
//! [`MAX_OPS_PER_SCRIPT`], so no script call runs for long whatever one caller sends. A key
//! whose operations do not fit one call continues in the next call of the same *lane*, and a
//! lane's calls are sent one after another, so a key's operations are applied in order (not
//! even a `NOSCRIPT` retry can reorder them); lanes run concurrently. While
//! [`MAX_IN_FLIGHT`] batches are outstanding the actor lets the mailbox fill, which is what
//! makes the next batch large; [`MAX_IN_FLIGHT_SPREAD`] while keys are mostly distinct.
//!
//! An `inc_many` is sent in parts of at most [`MAX_MESSAGE_OPS`] operations, each part one
//! message, the next part sent when the previous one is answered: its operations on a key are
//! applied in input order, and it never needs more room than the mailbox has.
//!
//! A caller whose deadline passed (or whose future was dropped) before its operation was sent
//! is skipped: its request is never applied. The actor exits when the last handle is dropped,
//! after answering what is in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::connection::Conn;
use super::script::{decode, OpArgs, OpCode, OpReply, DECIDE_LUA};
use super::RedisError;
use crate::random::RandomSource;
use crate::shard::Shared;

/// Operations a script call takes while it opens new keys (the script reads each distinct key
/// once, so a call of many keys costs a read per key).
pub(crate) const MAX_OPS_PER_CALL: usize = 64;
/// Operations one script call holds at most, however they are spread over keys: bounds the
/// time one call holds the server (about 1 µs of Redis CPU per operation on a hot key).
pub(crate) const MAX_OPS_PER_SCRIPT: usize = 256;
/// Operations drained from the mailbox into one batch, at most (a message is never split, so
/// one message of up to [`MAX_MESSAGE_OPS`] can exceed it).
pub(crate) const MAX_BATCH_OPS: usize = 512;
/// Operations one message carries at most: an `inc_many` is sent in parts of this size.
pub(crate) const MAX_MESSAGE_OPS: usize = 1024;
/// Batches outstanding at once while traffic concentrates on few keys: the mailbox fills
/// meanwhile, the next batch is larger, and duplicate keys coalesce (one read, one write).
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Batches outstanding at once while most operations are on distinct keys: nothing coalesces,
/// so smaller script calls in parallel serve more (measured: 2 → 4 took 100k-key traffic from
/// ~90k to ~110k decisions/s and lowered Redis CPU per decision, while a hot key did best at 2).
pub(crate) const MAX_IN_FLIGHT_SPREAD: usize = 4;
/// Mailbox capacity in operations (not messages): what the queue can hold is bounded whatever
/// the callers send; callers wait for room within their deadline.
pub(crate) const MAILBOX_OPS: usize = 16 * 1024;

/// One answered operation: the server time of the decision and its reply.
pub(crate) type Answer = Result<(u64, OpReply), RedisError>;

/// Messages the batcher actor handles.
#[derive(Debug)]
pub(crate) enum BatcherCommand {
    /// Run one operation on `key` (in hash slot `slot`) and send the answer to `reply`. Its
    /// sender reserved room for one operation; the actor frees it when it takes the message.
    Decide { op: Pending },
    /// Run up to [`MAX_MESSAGE_OPS`] operations, in order; one message, so they land in one
    /// batch. Its sender reserved room for all of them.
    DecideMany { ops: Vec<Pending> },
}

impl BatcherCommand {
    fn len(&self) -> usize {
        match self {
            BatcherCommand::Decide { .. } => 1,
            BatcherCommand::DecideMany { ops } => ops.len(),
        }
    }
}

/// A cloneable handle to the batcher actor.
#[derive(Clone, Debug)]
pub(crate) struct BatcherHandle {
    tx: mpsc::UnboundedSender<BatcherCommand>,
    /// Free room in the mailbox, in operations (the channel itself is bounded by this).
    room: Arc<Semaphore>,
    deadline: Duration,
}

impl BatcherHandle {
    /// Spawns the actor on the current tokio runtime.
    pub(crate) fn spawn(
        conn: Conn,
        shared: Arc<Shared>,
        clock_time: bool,
        deadline: Duration,
        random: Box<dyn RandomSource>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(MAILBOX_OPS));
        let script = redis::Script::new(DECIDE_LUA);
        let actor = BatcherActor {
            rx,
            room: room.clone(),
            conn,
            sha: script.get_hash().to_string(),
            shared,
            clock_time,
            deadline,
            random,
        };
        tokio::spawn(actor.run());
        Self { tx, room, deadline }
    }

    /// Runs one operation within the deadline.
    pub(crate) async fn call(&self, key: Vec<u8>, slot: u16, args: OpArgs) -> Answer {
        let (reply, rx) = oneshot::channel();
        let op = Pending {
            key,
            slot,
            args,
            reply,
        };
        self.within(async {
            self.reserve(1).await?;
            self.send(BatcherCommand::Decide { op })?;
            rx.await.map_err(|_| RedisError::Shutdown)?
        })
        .await
    }

    /// Runs many operations (see the module docs: parts of at most [`MAX_MESSAGE_OPS`], one
    /// after another), the whole call within one deadline; the answers come in input order.
    pub(crate) async fn call_many(
        &self,
        ops: impl IntoIterator<Item = (Vec<u8>, u16, OpArgs)>,
    ) -> Result<Vec<Answer>, RedisError> {
        let ops: Vec<(Vec<u8>, u16, OpArgs)> = ops.into_iter().collect();
        self.within(async {
            let mut answers = Vec::with_capacity(ops.len());
            let mut ops = ops.into_iter().peekable();
            while ops.peek().is_some() {
                let (part, rxs): (Vec<Pending>, Vec<_>) = ops
                    .by_ref()
                    .take(MAX_MESSAGE_OPS)
                    .map(|(key, slot, args)| {
                        let (reply, rx) = oneshot::channel();
                        let p = Pending {
                            key,
                            slot,
                            args,
                            reply,
                        };
                        (p, rx)
                    })
                    .unzip();
                self.reserve(part.len()).await?;
                self.send(BatcherCommand::DecideMany { ops: part })?;
                for rx in rxs {
                    answers.push(rx.await.map_err(|_| RedisError::Shutdown)?);
                }
            }
            Ok(answers)
        })
        .await
    }

    /// Waits for room for `n` operations in the mailbox and reserves it; the actor frees it
    /// when it takes the message (the caller sends at once after: no await in between, so a
    /// dropped caller never leaves room reserved).
    async fn reserve(&self, n: usize) -> Result<(), RedisError> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let permit = self
            .room
            .acquire_many(n)
            .await
            .map_err(|_| RedisError::Shutdown)?;
        permit.forget();
        Ok(())
    }

    fn send(&self, command: BatcherCommand) -> Result<(), RedisError> {
        self.tx.send(command).map_err(|_| RedisError::Shutdown)
    }

    /// `work` bounded by the deadline (mailbox wait included).
    async fn within<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        let deadline = self.deadline;
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| RedisError::Timeout { deadline })?
    }
}

/// One queued operation, as the actor keeps it.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) key: Vec<u8>,
    pub(crate) slot: u16,
    pub(crate) args: OpArgs,
    pub(crate) reply: oneshot::Sender<Answer>,
}

struct BatcherActor {
    rx: mpsc::UnboundedReceiver<BatcherCommand>,
    /// The mailbox's free room in operations, shared with the handles.
    room: Arc<Semaphore>,
    conn: Conn,
    sha: String,
    shared: Arc<Shared>,
    /// Scripts take `now` from the limiter's clock instead of `TIME` (tests).
    clock_time: bool,
    deadline: Duration,
    /// The suppressed strategy's draws, owned by the actor: no lock on the request path.
    random: Box<dyn RandomSource>,
}

impl BatcherActor {
    async fn run(mut self) {
        let mut in_flight = FuturesUnordered::new();
        let mut limit = MAX_IN_FLIGHT;
        loop {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                first = self.rx.recv(), if in_flight.len() < limit => {
                    let Some(first) = first else { break };
                    let mut batch: Vec<Pending> = Vec::with_capacity(first.len());
                    take(first, &mut batch);
                    self.drain(&mut batch);
                    if batch.len() < MAX_BATCH_OPS && !in_flight.is_empty() {
                        // Under load, callers answered by the last reply are still running on
                        // this runtime and about to send: let them, then take what they sent.
                        // (Idle, the lone request goes out at once.)
                        tokio::task::yield_now().await;
                        self.drain(&mut batch);
                    }
                    // The batch left the mailbox: free its room (once per batch, not per
                    // message: each release takes the semaphore's lock).
                    self.room.add_permits(batch.len());
                    // A caller that gave up before its operation is sent is not applied behind
                    // its back.
                    batch.retain(|p| !p.reply.is_closed());
                    self.draw(&mut batch);
                    if !batch.is_empty() {
                        limit = in_flight_limit(&batch).unwrap_or(limit);
                        in_flight.push(self.execute(batch));
                    }
                }
            }
        }
        while in_flight.next().await.is_some() {}
    }

    /// Moves queued messages into `batch` while it holds fewer than [`MAX_BATCH_OPS`].
    fn drain(&mut self, batch: &mut Vec<Pending>) {
        while batch.len() < MAX_BATCH_OPS {
            match self.rx.try_recv() {
                Ok(c) => take(c, batch),
                Err(_) => break,
            }
        }
    }

    /// One uniform draw per suppressed decision of the batch (used or not), in batch order. A
    /// panicking custom source is contained: the draw counts as 0.5.
    fn draw(&mut self, batch: &mut [Pending]) {
        for p in batch {
            if matches!(p.args.code, OpCode::SuppressedInc | OpCode::SuppressedCheck) {
                let rng = &mut self.random;
                p.args.draw =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rng.next_f64()))
                        .unwrap_or(0.5);
            }
        }
    }

    /// Sends one batch: per slot, script calls cut by operations, in lanes (see the module
    /// docs).
    fn execute(
        &self,
        batch: Vec<Pending>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let groups = group_by_slot(batch, self.conn.is_cluster());
        let now = self.clock_time.then(|| self.shared.clock.now_ms());
        let (conn, sha, bucket_ms, deadline) = (
            self.conn.clone(),
            self.sha.clone(),
            self.shared.bucket_ms,
            self.deadline,
        );
        let lanes: Vec<_> = groups
            .into_iter()
            .flat_map(|g| cut(g, MAX_OPS_PER_CALL, MAX_OPS_PER_SCRIPT))
            .map(|lane| {
                let (conn, sha) = (conn.clone(), sha.clone());
                async move {
                    for ops in lane {
                        script_call(conn.clone(), sha.clone(), ops, now, bucket_ms, deadline).await;
                    }
                }
            })
            .collect();
        async move {
            futures_util::future::join_all(lanes).await;
        }
    }
}

/// Moves a message's operations into `batch` (the caller frees their room in the mailbox).
fn take(c: BatcherCommand, batch: &mut Vec<Pending>) {
    match c {
        BatcherCommand::Decide { op } => batch.push(op),
        BatcherCommand::DecideMany { ops } => batch.extend(ops),
    }
}

/// How many batches may be outstanding after `batch`: more when its keys are mostly distinct;
/// `None` (keep the current limit) when the batch is too small to tell.
fn in_flight_limit(batch: &[Pending]) -> Option<usize> {
    if batch.len() < 8 {
        return None;
    }
    let mut keys: Vec<&[u8]> = batch.iter().map(|p| &p.key[..]).collect();
    keys.sort_unstable();
    keys.dedup();
    Some(if keys.len() * 2 > batch.len() {
        MAX_IN_FLIGHT_SPREAD
    } else {
        MAX_IN_FLIGHT
    })
}

/// Groups operations by hash slot, keeping their order inside each group (one group when the
/// server is not a cluster: any keys may share a script call there).
fn group_by_slot(batch: Vec<Pending>, cluster: bool) -> Vec<Vec<Pending>> {
    if !cluster {
        return vec![batch];
    }
    let mut index: HashMap<u16, usize> = HashMap::new();
    let mut groups: Vec<Vec<Pending>> = Vec::new();
    for p in batch {
        let i = *index.entry(p.slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(p);
    }
    groups
}

/// A sequence of script calls sent one after another.
type Lane = Vec<Vec<Pending>>;

/// Cuts one slot's operations into script calls by operations, grouped in lanes: a call takes
/// new keys while it holds fewer than `open` operations, and operations of its keys up to
/// `cap`; a key that outgrows its call continues in a new call of the same lane (sent after
/// it). Every key's operations stay in input order along its lane.
fn cut(ops: Vec<Pending>, open: usize, cap: usize) -> Vec<Lane> {
    if ops.len() <= open.min(cap) {
        // The common case: one call (no key can outgrow it).
        return vec![vec![ops]];
    }
    // First assign each operation a call, over borrowed keys; then move them.
    let mut call_of: Vec<usize> = Vec::with_capacity(ops.len());
    // sizes[i]: operations of call i; lane_of[i]: its lane; lanes hold call indices.
    let mut sizes: Vec<usize> = Vec::new();
    let mut lane_of: Vec<usize> = Vec::new();
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    {
        // The call a key's next operation goes to.
        let mut home: HashMap<&[u8], usize> = HashMap::new();
        for p in &ops {
            let call = match home.get(p.key.as_slice()) {
                Some(&i) if sizes[i] < cap => i,
                Some(&i) => {
                    // The key outgrew its call: continue in a new call of the same lane.
                    let lane = lane_of[i];
                    sizes.push(0);
                    lane_of.push(lane);
                    lanes[lane].push(sizes.len() - 1);
                    sizes.len() - 1
                }
                None => {
                    // A new key joins the newest call while it is open, else opens a new lane.
                    match sizes.len().checked_sub(1) {
                        Some(last) if sizes[last] < open => last,
                        _ => {
                            sizes.push(0);
                            lane_of.push(lanes.len());
                            lanes.push(vec![sizes.len() - 1]);
                            sizes.len() - 1
                        }
                    }
                }
            };
            home.insert(&p.key, call);
            sizes[call] += 1;
            call_of.push(call);
        }
    }
    let mut calls: Vec<Option<Vec<Pending>>> =
        sizes.iter().map(|&n| Some(Vec::with_capacity(n))).collect();
    for (p, i) in ops.into_iter().zip(call_of) {
        if let Some(Some(call)) = calls.get_mut(i) {
            call.push(p);
        }
    }
    lanes
        .into_iter()
        .map(|lane| {
            lane.into_iter()
                .filter_map(|i| calls.get_mut(i).and_then(Option::take))
                .collect()
        })
        .collect()
}

/// Builds `EVALSHA sha`/`EVAL body` with the call's keys (each distinct key once) and ops.
fn build(verb: &str, script: &str, ops: &[Pending], now: Option<u64>, bucket_ms: u64) -> Cmd {
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut key_index: HashMap<&[u8], usize> = HashMap::new();
    let mut op_keys = Vec::with_capacity(ops.len());
    for p in ops {
        let i = *key_index.entry(&p.key[..]).or_insert_with(|| {
            keys.push(&p.key[..]);
            keys.len()
        });
        op_keys.push(i);
    }
    let mut cmd = redis::cmd(verb);
    cmd.arg(script).arg(keys.len());
    for k in &keys {
        cmd.arg(*k);
    }
    match now {
        Some(t) => cmd.arg(t),
        None => cmd.arg(""),
    };
    cmd.arg(bucket_ms);
    let mut packed = Vec::with_capacity(ops.len() * 56);
    for (p, i) in ops.iter().zip(op_keys) {
        packed.extend_from_slice(&p.args.pack(i));
    }
    cmd.arg(packed);
    cmd
}

/// Tries a script call is sent at most (redirects and cluster retries included); the deadline
/// bounds them too.
const MAX_SENDS: usize = 8;
/// First pause before re-sending after `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` or `READONLY` on a
/// cluster (doubling each time).
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// What to do after a failed send, from what the error proves.
enum Next {
    /// The script did not run (`NOSCRIPT`): send the body with `EVAL`.
    Eval,
    /// The slot is served (or imported) elsewhere: send there.
    Redirect(super::connection::Redirect),
    /// The cluster is reconfiguring and refused the call before running it: pause, re-send.
    Pause,
    /// Not provably unexecuted, or not worth retrying: answer with the error.
    Fail,
}

fn next_step(e: &redis::RedisError, cluster: bool, evaled: bool) -> Next {
    match e.code() {
        Some("NOSCRIPT") if !evaled => Next::Eval,
        Some("MOVED" | "ASK") if cluster => {
            super::connection::Redirect::of(e).map_or(Next::Fail, Next::Redirect)
        }
        // Refused before the script ran (READONLY: by its first write, after a failover; the
        // client refreshes the slot map meanwhile).
        Some("TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY") if cluster => Next::Pause,
        _ => Next::Fail,
    }
}

/// Runs one script call and answers its operations. The call is re-sent only when the server
/// proved it did not run: `NOSCRIPT` (once, as `EVAL`, which caches the script again), and on a
/// cluster redirects and reconfiguration errors; never after a timeout or a lost connection,
/// when it may have run.
async fn script_call(
    mut conn: Conn,
    sha: String,
    ops: Vec<Pending>,
    now: Option<u64>,
    bucket_ms: u64,
    deadline: Duration,
) {
    let cluster = conn.is_cluster();
    let work = async {
        let mut cmd = build("EVALSHA", &sha, &ops, now, bucket_ms);
        let mut evaled = false;
        let mut redirect = None;
        let mut pause = RETRY_PAUSE;
        let mut sends = 0;
        loop {
            sends += 1;
            let r = match &redirect {
                Some(to) => conn.query_redirected(&cmd, to).await,
                None => conn.query(&cmd).await,
            };
            let e = match r {
                Ok(v) => return Ok(v),
                Err(e) if sends >= MAX_SENDS => return Err(e),
                Err(e) => e,
            };
            match next_step(&e, cluster, evaled) {
                Next::Eval => {
                    // The EVALSHA did not run, so nothing is applied twice.
                    evaled = true;
                    cmd = build("EVAL", DECIDE_LUA, &ops, now, bucket_ms);
                }
                Next::Redirect(to) => redirect = Some(to),
                Next::Pause => {
                    redirect = None;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Next::Fail => return Err(e),
            }
        }
    };
    let work = traced!(work, "eyelet.redis.script_call", ops = ops.len(), cluster);
    #[cfg(feature = "metrics")]
    let started = std::time::Instant::now();
    let result: Result<Value, RedisError> = match tokio::time::timeout(deadline, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RedisError::from_client(&e, deadline)),
        Err(_) => Err(RedisError::Timeout { deadline }),
    };
    let result = result.and_then(|v| decode(&v, ops.iter().map(|p| &p.args)));
    #[cfg(feature = "metrics")]
    crate::metrics::redis_call(ops.len(), started.elapsed(), result.as_ref().err());
    match result {
        Ok((t, replies)) => {
            for (p, r) in ops.into_iter().zip(replies) {
                let _ = p.reply.send(Ok((t, r)));
            }
        }
        Err(e) => {
            for p in ops {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::script::OpCode;

    fn op(key: &str, n: u64) -> Pending {
        let (reply, _rx) = oneshot::channel();
        Pending {
            key: key.as_bytes().to_vec(),
            slot: 0,
            args: OpArgs {
                code: OpCode::AbsoluteInc,
                window_ms: 1000,
                capacity: 10,
                hard: 10,
                n,
                draw: 0.0,
            },
            reply,
        }
    }

    /// The keys of each call, and each key's weights along the lanes, flattened.
    fn keys_per_call(lanes: &[Lane]) -> Vec<Vec<Vec<u8>>> {
        lanes
            .iter()
            .flatten()
            .map(|c| c.iter().map(|p| p.key.clone()).collect())
            .collect()
    }

    #[test]
    fn calls_are_cut_by_operations_and_a_split_key_stays_in_one_lane_in_order() {
        // 100 operations on "hot" among 60 distinct keys: calls open to new keys below 16
        // operations and hold at most 24
        let mut ops = Vec::new();
        for i in 0..160u64 {
            if i % 8 < 5 {
                ops.push(op("hot", i));
            } else {
                ops.push(op(&format!("k{i}"), i));
            }
        }
        let lanes = cut(ops, 16, 24);
        let calls = keys_per_call(&lanes);
        assert!(calls.iter().all(|c| c.len() <= 24), "no call over the cap");
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 160);
        // every lane holding "hot" is one lane: its calls run one after another
        let hot_lanes: Vec<usize> = lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| l.iter().flatten().any(|p| p.key == b"hot"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hot_lanes.len(), 1, "{hot_lanes:?}");
        let hot: Vec<u64> = lanes[hot_lanes[0]]
            .iter()
            .flatten()
            .filter(|p| p.key == b"hot")
            .map(|p| p.args.n)
            .collect();
        assert_eq!(hot.len(), 100);
        assert!(
            hot.windows(2).all(|w| w[0] < w[1]),
            "order kept along the lane"
        );
        // other keys are never split
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        for (c, keys) in calls.iter().enumerate() {
            for k in keys.iter().filter(|k| k.as_slice() != b"hot") {
                assert_eq!(
                    *seen.entry(k.clone()).or_insert(c),
                    c,
                    "a cold key was split"
                );
            }
        }
    }

    #[test]
    fn nine_thousand_operations_on_one_key_become_bounded_calls() {
        let ops: Vec<Pending> = (0..9_000).map(|i| op("hot", i)).collect();
        let lanes = cut(ops, MAX_OPS_PER_CALL, MAX_OPS_PER_SCRIPT);
        assert_eq!(lanes.len(), 1);
        assert_eq!(lanes[0].len(), 9_000usize.div_ceil(MAX_OPS_PER_SCRIPT));
        assert!(lanes[0].iter().all(|c| c.len() <= MAX_OPS_PER_SCRIPT));
    }
}
