//! Password hashing and verification (argon2id) on a bounded set of threads.
//!
//! Argon2 is deliberately expensive (19 MiB, two passes), so a login flood
//! could starve the proxied traffic sharing the machine. At most
//! `max(1, cores / 2)` verification threads run at once, with a bounded queue
//! behind them: past it, logins are refused as busy (429) instead of queueing
//! without end. While more than [`FLOOD_QUEUE`] verifications wait, the next
//! one runs in Linux's idle scheduling class (`SCHED_IDLE`): it gets the CPU
//! time the serving threads leave, and a woken serving thread takes its core
//! at once, so a login flood cannot take the CPU from signed-in traffic. A
//! lone sign-in runs at normal priority, so a busy host (the application
//! behind the gateway, say) does not stall it. Unknown users are checked
//! against a dummy hash of a cost that real users' hashes have ([`HashCost`]),
//! so their answers take as long as a wrong password. A verification whose caller has gone (a client
//! that hung up while it waited) is dropped from the queue unrun. Should
//! the idle-class threads make no progress for [`RESCUE_AFTER`] (every core
//! kept busy at normal priority, by the proxied traffic or by an attacker),
//! the stalled verification leaves the idle class until it is done, in the
//! work area it already has, so sign-ins still advance. Where leaving the
//! idle class is refused (it needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that
//! allows nice 0), the oldest waiting verification runs on one extra thread
//! at normal priority instead, with a work area of its own.
//!
//! Memory: a verification's argon2 work area (19 MiB with the default
//! parameters) lives on its thread's stack, so at most `concurrency` exist at
//! once (one more while a stalled flood is rescued on an extra thread), and
//! each goes back to the operating system when its thread ends. A
//! thread takes the next waiting verification itself while there is one and
//! its priority suits it (its work area is already in memory, which saves
//! the faulting in of 19 MiB per verification in a flood), and ends when
//! none waits: after a sign-in, or a flood, the gateway's resident memory
//! falls back to what it was. (A heap area, freed or pooled, stayed resident:
//! the allocator keeps freed memory.) A work area is wiped after each use: it
//! holds password-derived state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;
use zeroize::Zeroize as _;

use crate::secret::Secret;

/// Passwords longer than this are refused (argon2 accepts any length; this
/// bounds the work an anonymous caller can ask for).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// How many verifications may wait for a permit before new ones are refused.
pub const MAX_QUEUED: usize = 256;

/// More verifications than this waiting for a permit is a flood: the next
/// ones run in the idle scheduling class. Three sign-ins queued behind a
/// running one (each some 20 ms) are more than a site's users make at once.
pub const FLOOD_QUEUE: usize = 2;

/// When the idle-class verification threads have made no progress for this
/// long (normal-priority work has kept every core busy), one of them leaves
/// the idle class for the verification it is on (or, where that is refused,
/// the oldest waiting verification runs on an extra thread at normal
/// priority).
pub const RESCUE_AFTER: Duration = Duration::from_secs(1);

/// The pool was full: refuse the login as rate limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("password verification is busy")]
pub struct Busy;

/// Hashes a password as an argon2id PHC string with the default parameters.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Blocks (1 KiB each) in the work area of the default parameters.
const DEFAULT_BLOCKS: usize = Params::DEFAULT.block_count();

/// The stack of a verification thread: the default parameters' work area
/// lives on it (see [`verify_on_this_thread`]), with room to spare for the
/// frames around it (unoptimized test builds need more than release ones).
const THREAD_STACK: usize = DEFAULT_BLOCKS * Block::SIZE + 2 * 1024 * 1024;

/// The stack of the thread that starts and joins verification threads.
const SUPERVISOR_STACK: usize = 64 * 1024;

/// True when `password` matches the PHC string `hash` (any argon2 variant,
/// the hash's own parameters); the outputs are compared in constant time.
/// False for anything that does not parse, or whose memory cannot be had.
///
/// The work area of the default parameters (and of smaller ones) is an
/// array on this thread's stack, so it goes back to the operating system
/// when the thread ends: glibc discards a finished thread's stack pages
/// (`MADV_DONTNEED`), where a freed heap block of 19 MiB stays resident in
/// the allocator. Larger parameters (an operator's own hashes) take a heap
/// area of their own. Either is wiped before it is given up: it holds
/// password-derived state.
fn verify_on_this_thread(hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Some(cost) = HashCost::of_parsed(&parsed) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let argon2 = Argon2::new(cost.algorithm, cost.version, params);
    let mut out = vec![0u8; expected.len()];
    let hashed = if cost.blocks() <= DEFAULT_BLOCKS {
        hash_in_stack_area(&argon2, password, salt, &mut out, cost.blocks())
    } else {
        hash_in_heap_area(&argon2, password, salt, &mut out, cost.blocks())
    };
    let matched = hashed && bool::from(out.as_slice().ct_eq(expected.as_bytes()));
    out.zeroize();
    matched
}

/// [`hash_in`] with the first `blocks` of an array on this thread's stack.
/// A frame of its own: a heap-area verification must not reserve (and have
/// the stack probes fault in) the 19 MiB array as well.
#[inline(never)]
fn hash_in_stack_area(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    blocks: usize,
) -> bool {
    let mut area = [Block::new(); DEFAULT_BLOCKS];
    hash_in(argon2, password, salt, out, &mut area[..blocks])
}

/// [`hash_in`] with a heap area of `blocks` (an operator's larger
/// parameters); false when that memory cannot be had.
#[inline(never)]
fn hash_in_heap_area(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    blocks: usize,
) -> bool {
    let mut area = Vec::new();
    if area.try_reserve_exact(blocks).is_err() {
        return false;
    }
    area.resize(blocks, Block::new());
    hash_in(argon2, password, salt, out, &mut area)
}

/// Hashes `password` into `out` in the work area `area`, then wipes the area
/// (also when argon2 panics).
fn hash_in(argon2: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8], area: &mut [Block]) -> bool {
    let area = WipedOnDrop(area);
    argon2
        .hash_password_into_with_memory(password, salt, out, &mut *area.0)
        .is_ok()
}

/// A work area borrowed for one hash, wiped when the borrow ends, however it
/// ends. (Borrowed, not owned: wrapping the array itself would move 19 MiB.)
struct WipedOnDrop<'a>(&'a mut [Block]);

impl Drop for WipedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(zeroize::Zeroize::zeroize);
    }
}

/// What checking a password against a hash costs: its variant, version,
/// parameters and output length (a salt's length costs next to nothing).
/// Unknown logins are checked against a dummy hash of a cost the real users
/// have, so they answer in a time real users' wrong passwords take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HashCost {
    algorithm: Algorithm,
    version: Version,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
    output_len: usize,
}

impl HashCost {
    /// The cost of [`hash_password`]'s hashes.
    pub const DEFAULT: Self = Self {
        algorithm: Algorithm::Argon2id,
        version: Version::V0x13,
        m_cost: Params::DEFAULT.m_cost(),
        t_cost: Params::DEFAULT.t_cost(),
        p_cost: Params::DEFAULT.p_cost(),
        output_len: Params::DEFAULT_OUTPUT_LEN,
    };

    /// The cost of checking against the PHC string `phc`; `None` when it is
    /// no argon2 hash (checking it then costs nothing: it never matches).
    pub fn of(phc: &str) -> Option<Self> {
        Self::of_parsed(&PasswordHash::new(phc).ok()?)
    }

    fn of_parsed(parsed: &PasswordHash) -> Option<Self> {
        let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).ok()?;
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(v) => v.ok()?,
        };
        let params = Params::try_from(parsed).ok()?;
        Some(Self {
            algorithm,
            version,
            m_cost: params.m_cost(),
            t_cost: params.t_cost(),
            p_cost: params.p_cost(),
            output_len: parsed.hash.as_ref()?.len(),
        })
    }

    /// Blocks (1 KiB each) in this cost's work area.
    fn blocks(&self) -> usize {
        Params::new(self.m_cost, self.t_cost, self.p_cost, None).map_or(usize::MAX, |p| p.block_count())
    }

    /// A PHC string of this cost with a random salt and a random output:
    /// checking a password against it costs what checking a real hash of
    /// this cost costs, and nothing matches it. No hashing needed to make it.
    fn dummy(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        format!(
            "${}$v={}$m={},t={},p={}${}${}",
            self.algorithm.as_str(),
            u32::from(self.version),
            self.m_cost,
            self.t_cost,
            self.p_cost,
            b64.encode(crate::crypto::random_bytes(16)),
            b64.encode(crate::crypto::random_bytes(self.output_len)),
        )
    }

    /// True when this cost asks less memory × passes of an attacker than
    /// [`hash_password`]'s.
    pub fn is_weaker_than_default(&self) -> bool {
        let work = |c: &Self| u64::from(c.m_cost) * u64::from(c.t_cost);
        work(self) < work(&Self::DEFAULT)
    }

    /// `m=…, t=…, p=…` for messages.
    pub fn params(&self) -> String {
        format!("m={}, t={}, p={}", self.m_cost, self.t_cost, self.p_cost)
    }
}

/// Dummy hashes kept per cost, at most this many (costs come from the
/// configured users, not from requests; past the bound one is made per use).
const MAX_DUMMIES: usize = 16;

/// Verifies passwords on a bounded set of threads (see the module doc).
#[derive(Debug, Clone)]
pub struct PasswordPool {
    shared: Arc<Shared>,
    /// The dummy hash of each cost asked for so far.
    dummies: Arc<Mutex<BTreeMap<HashCost, Arc<str>>>>,
}

#[derive(Debug)]
struct Shared {
    /// Verification threads alive at most.
    concurrency: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Verification threads alive, each counted until it has been joined
    /// (its stack, with the work area, is gone then).
    threads: usize,
    /// Verifications waiting for a thread, oldest first.
    queue: VecDeque<Job>,
    /// Threads started so far.
    started: u64,
    /// Verifications run so far (not those whose caller had gone).
    ran: u64,
    /// The scheduling policy each verification ran in, in order.
    #[cfg(test)]
    classes: Vec<Option<u32>>,
    /// Verification threads in the idle class now.
    idle: usize,
    /// When a verification last finished, or a thread last entered the idle
    /// class: how long the pool has gone without progress.
    progress: Option<Instant>,
    /// True while a rescue thread runs (see [`Shared::rescue_if_stalled`]).
    rescuing: bool,
    /// The verification threads inside a verification now (from after their
    /// priority was set for it until it is done): only these are promoted,
    /// so a promotion cannot land between two verifications and be undone
    /// by the thread's re-entry into the idle class.
    verifying: Vec<std::thread::ThreadId>,
    /// The verification thread that left the idle class for the verification
    /// it is on (see [`Shared::promote_if_stalled`]).
    promoted: Option<std::thread::ThreadId>,
    /// True once leaving the idle class has been refused: stalls are rescued
    /// on an extra thread from then on.
    promotion_refused: bool,
    /// Stalled verifications rescued so far, either way.
    rescued: u64,
    /// Whether leaving the idle class is refused (as without privileges).
    #[cfg(test)]
    refuse_promotion: bool,
    /// Taken by the next verification, which waits for it before it runs.
    #[cfg(test)]
    hold: Option<std::sync::mpsc::Receiver<()>>,
    /// Whether the next verification panics (after it was counted as one).
    #[cfg(test)]
    panic_next: bool,
    /// Whether each next thread start is refused (a process limit).
    #[cfg(test)]
    refuse: VecDeque<bool>,
}

impl State {
    /// The oldest waiting verification whose caller still waits for it
    /// (a client that hung up takes no argon2 run).
    fn next_job(&mut self) -> Option<Job> {
        while let Some(job) = self.queue.pop_front() {
            if !job.reply.is_closed() {
                return Some(job);
            }
        }
        None
    }

    /// How many verifications wait whose callers still wait for them
    /// (those that hung up are dropped here): callers that have gone do not
    /// make a flood.
    fn waiting(&mut self) -> usize {
        self.queue.retain(|job| !job.reply.is_closed());
        self.queue.len()
    }

    /// True when every verification thread is in the idle class, none has
    /// made progress for [`RESCUE_AFTER`], and no rescue is on.
    fn stalled(&self) -> bool {
        self.threads > 0
            && self.idle >= self.threads
            && !self.rescuing
            && self.promoted.is_none()
            && self.progress.is_some_and(|t| t.elapsed() >= RESCUE_AFTER)
    }

    /// Marks the calling thread as inside a verification.
    fn start_verifying(&mut self) {
        self.verifying.push(std::thread::current().id());
    }

    /// Marks the calling thread as outside any verification, and ends its
    /// promotion, if it has one.
    fn stop_verifying(&mut self) {
        let me = std::thread::current().id();
        self.verifying.retain(|id| *id != me);
        if self.promoted == Some(me) {
            self.promoted = None;
        }
    }
}

/// One verification: a hash, the password to check against it and where the
/// answer goes.
struct Job {
    hash: Arc<str>,
    password: Secret,
    reply: oneshot::Sender<bool>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing is left half-changed under this lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `job` on a thread of its own if one may start, else queues it;
    /// busy when the queue is full or no thread could be had.
    fn submit(self: &Arc<Self>, job: Job) -> Result<(), Busy> {
        let mut state = self.state();
        if state.threads >= self.concurrency {
            if state.queue.len() >= MAX_QUEUED {
                // Callers that hung up leave their places first.
                state.queue.retain(|job| !job.reply.is_closed());
                if state.queue.len() >= MAX_QUEUED {
                    return Err(Busy);
                }
            }
            state.queue.push_back(job);
            return Ok(());
        }
        // A free place, so nothing waits: a sign-in on its own, normal priority.
        state.threads += 1;
        drop(state);
        let shared = self.clone();
        let supervisor = self.spawn("portcullis-pool", SUPERVISOR_STACK, move || {
            shared.supervise(Priority::Normal, job);
        });
        if supervisor.is_err() {
            // No thread could be had (a process or memory limit): the job
            // went with the closure, and so did its caller's answer.
            self.give_up_place();
            return Err(Busy);
        }
        Ok(())
    }

    /// [`spawn_thread`], which tests can make fail.
    fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        stack: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<JoinHandle<T>> {
        #[cfg(test)]
        if self.state().refuse.pop_front() == Some(true) {
            return Err(std::io::Error::other("refused by the test"));
        }
        spawn_thread(name, stack, work)
    }

    /// Gives back a place whose thread could not be started. Verifications
    /// queued meanwhile (they saw the place taken) are answered busy when no
    /// other thread is left to take them, rather than wait for good.
    fn give_up_place(&self) {
        let mut state = self.state();
        state.threads -= 1;
        if state.threads == 0 {
            let stranded = std::mem::take(&mut state.queue);
            drop(state);
            drop(stranded);
        }
    }

    /// Runs `job`, then, while verifications wait, the next ones on this
    /// same thread (its work area is already in memory) as long as its
    /// priority suits them: a normal thread moves into the idle class when a
    /// flood starts; an idle one cannot move back (that needs privileges) and
    /// ends, handing back the next job for a new thread.
    fn work(&self, mut priority: Priority, mut job: Job) -> Option<Job> {
        let mut mark = IdleMark {
            shared: self,
            idle: false,
        };
        loop {
            if priority == Priority::Idle {
                // Before each verification: a promotion lasts one.
                mark.enter();
            }
            self.run_job(job);
            let mut state = self.state();
            let next = state.next_job()?;
            let wanted = Priority::with_waiting(state.waiting());
            drop(state);
            match (priority, wanted) {
                (Priority::Idle, Priority::Normal) => return Some(next),
                (Priority::Normal, Priority::Idle) => priority = Priority::Idle,
                _ => {}
            }
            job = next;
        }
    }

    /// Runs one verification on this thread, unless its caller has gone.
    fn run_job(&self, job: Job) {
        let Job {
            hash,
            password,
            reply,
        } = job;
        if !reply.is_closed() {
            let verifying = {
                let mut state = self.state();
                state.ran += 1;
                state.start_verifying();
                Verifying(Some(self))
            };
            #[cfg(test)]
            {
                let (hold, panic) = {
                    let mut state = self.state();
                    (state.hold.take(), std::mem::take(&mut state.panic_next))
                };
                if let Some(hold) = hold {
                    let _ = hold.recv();
                }
                assert!(!panic, "a verification panicked (test)");
            }
            let matched = verify_on_this_thread(&hash, password.expose());
            let mut state = self.state();
            state.progress = Some(Instant::now());
            verifying.end(&mut state);
            #[cfg(test)]
            state.classes.push(tests::own_policy());
            drop(state);
            let _ = reply.send(matched);
        }
        // The password is wiped as it goes.
        drop(password);
    }

    /// Called by a verification thread's supervisor every half
    /// [`RESCUE_AFTER`] while the thread works. When every verification
    /// thread is in the idle class and none has made progress for that long
    /// (normal-priority work, the proxied traffic or an attacker's, keeps
    /// every core busy), this one leaves the idle class for the verification
    /// it is on (it goes back in before its next one). So sign-ins still
    /// advance, by at least one every [`RESCUE_AFTER`] or so, on a host that
    /// idle-class work cannot get onto, at the cost of one verification's CPU
    /// time at normal priority per stall, in the work area that verification
    /// already has. Only a thread inside a verification is moved (one between
    /// two would go back into the idle class at once). Leaving the idle class
    /// needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows the thread's nice
    /// value (20 for nice 0; the kernel counts the idle class as nice 20):
    /// once refused, the waiting callers rescue stalls on an extra thread
    /// instead ([`Shared::rescue_if_stalled`]).
    fn promote_if_stalled<T>(&self, worker: &JoinHandle<T>) {
        // Never waits for the lock, for the reason in rescue_if_stalled.
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(state)) => state.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let id = worker.thread().id();
        if state.promotion_refused || !state.stalled() || !state.verifying.contains(&id) {
            return;
        }
        // The lock is held until the policy has been read back: the worker
        // cannot end this verification (and go back into the idle class)
        // in between.
        #[cfg(test)]
        let refused = state.refuse_promotion;
        #[cfg(not(test))]
        let refused = false;
        if !refused && leave_idle_class(worker) {
            state.promoted = Some(id);
            state.rescued += 1;
            drop(state);
            crate::metrics::password_rescue();
        } else {
            // For good: what refused it (privileges, limits, a system-call
            // filter) does not change while the process runs, and the
            // extra-thread rescue always works.
            state.promotion_refused = true;
        }
    }

    /// Called by each waiting caller every half [`RESCUE_AFTER`], for
    /// where a stalled verification cannot leave the idle class
    /// ([`Shared::promote_if_stalled`]): when the pool is stalled, the oldest
    /// waiting verification runs on one extra thread at normal priority, at
    /// the cost of one more work area and one verification's CPU time per
    /// stall.
    fn rescue_if_stalled(self: &Arc<Self>) {
        // Never waits for the lock: an idle-class thread may hold it while
        // it waits for a core, and the caller here serves requests.
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(state)) => state.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if !state.promotion_refused || !state.stalled() {
            return;
        }
        let Some(job) = state.next_job() else {
            return;
        };
        state.rescuing = true;
        state.rescued += 1;
        drop(state);
        crate::metrics::password_rescue();
        crate::memory::make_room();
        let shared = self.clone();
        let rescue = self.spawn("portcullis-argon2", THREAD_STACK, move || {
            let _flag = RescueFlag(&shared);
            shared.run_job(job);
        });
        if rescue.is_err() {
            // The job went with the closure: its caller hears busy.
            self.state().rescuing = false;
        }
    }

    /// Runs on a small thread of its own for as long as a place is taken:
    /// starts a verification thread for `job`, waits for it to end, then
    /// starts the next one for what it handed back or what is queued, until
    /// nothing is left. So a new thread, with a new work area, starts only
    /// once the old one's stack has gone, and at most `concurrency` work
    /// areas are ever resident, even when an idle-class thread takes a while
    /// to finish. The place is given back here only, after a last look at
    /// the queue under the lock: no verification is left waiting without a
    /// thread to take it. (Not tokio's blocking pool: a task it drops at
    /// shutdown, or cannot start, would keep the place for good.)
    fn supervise(self: Arc<Self>, priority: Priority, job: Job) {
        let mut next = Some((priority, job));
        loop {
            let handed_back = next.take().and_then(|(priority, job)| {
                self.state().started += 1;
                // The serving threads give back their free memory before
                // this thread's work area is faulted in.
                crate::memory::make_room();
                let shared = self.clone();
                let (ended, working) = std::sync::mpsc::channel::<std::convert::Infallible>();
                // No thread could be had: the job went with the closure, so
                // its caller hears busy. A thread that panicked dropped its
                // job too. Either way, the next waiting one is tried.
                self.spawn("portcullis-argon2", THREAD_STACK, move || {
                    // Dropped when the work ends, however it ends.
                    let _ended = ended;
                    shared.work(priority, job)
                })
                .ok()
                .and_then(|thread| {
                    while working.recv_timeout(RESCUE_AFTER / 2) == Err(RecvTimeoutError::Timeout) {
                        self.promote_if_stalled(&thread);
                    }
                    thread.join().ok().flatten()
                })
            });
            let mut state = self.state();
            let Some(job) = handed_back.or_else(|| state.next_job()) else {
                state.threads -= 1;
                return;
            };
            next = Some((Priority::with_waiting(state.waiting()), job));
        }
    }
}

/// Clears [`State::rescuing`] when a rescue thread's work ends, however it
/// ends.
struct RescueFlag<'a>(&'a Shared);

impl Drop for RescueFlag<'_> {
    fn drop(&mut self) {
        self.0.state().rescuing = false;
    }
}

/// Counts a verification thread in the idle class from [`IdleMark::enter`]
/// until it ends, however it ends.
struct IdleMark<'a> {
    shared: &'a Shared,
    idle: bool,
}

impl IdleMark<'_> {
    /// Moves the calling verification thread into the idle class (again,
    /// after a promotion).
    fn enter(&mut self) {
        // A thread the idle class was refused to runs at normal priority,
        // and is no reason for a rescue.
        let entered = enter_idle_class();
        if entered == self.idle {
            return;
        }
        self.idle = entered;
        let mut state = self.shared.state();
        if entered {
            state.idle += 1;
            state.progress = Some(Instant::now());
        } else {
            state.idle -= 1;
        }
    }
}

impl Drop for IdleMark<'_> {
    fn drop(&mut self) {
        if self.idle {
            self.shared.state().idle -= 1;
        }
    }
}

/// Counts the calling thread inside a verification (see
/// [`State::verifying`]) until [`Verifying::end`] or, when the verification
/// panics, until it is dropped: on a thread of any priority, a rescue
/// thread's included, so no id of a thread that has gone is left behind.
struct Verifying<'a>(Option<&'a Shared>);

impl Verifying<'_> {
    /// The verification is done (under the lock the caller holds).
    fn end(mut self, state: &mut State) {
        // Disarmed first: the drop must never take the lock held here.
        self.0 = None;
        state.stop_verifying();
    }
}

impl Drop for Verifying<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.state().stop_verifying();
        }
    }
}

impl PasswordPool {
    /// A pool running at most `concurrency` verifications at once, each in
    /// its own work area (19 MiB with the default parameters).
    pub fn new(concurrency: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                concurrency: concurrency.max(1),
                state: Mutex::new(State::default()),
            }),
            dummies: Arc::default(),
        }
    }

    /// A pool sized for this machine: half its cores, at least one. The other
    /// half stays with the proxied traffic during a login flood, and memory
    /// stays bounded at one 19 MiB work area per thread.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        if cfg!(target_os = "linux") && !may_leave_idle_class() {
            tracing::info!(
                "no CAP_SYS_NICE and RLIMIT_NICE below 20: a login flood's stalled password check \
                 will be rescued on an extra thread, with a second 19 MiB work area \
                 (LimitNICE=+0 in a systemd unit avoids it)"
            );
        }
        Self::new(cores / 2)
    }

    /// True when `password` matches the PHC string `hash`.
    pub async fn verify(&self, hash: &str, password: Secret) -> Result<bool, Busy> {
        self.run(hash.into(), password).await
    }

    /// The work of checking `password` against a hash of `cost` (the
    /// default one when `None`), for a sign-in that names no one who has a
    /// password: it takes as long as a wrong password for a user with such a
    /// hash, and it never matches.
    pub async fn imitate(&self, cost: Option<&HashCost>, password: Secret) -> Result<(), Busy> {
        let dummy = self.dummy_for(cost.unwrap_or(&HashCost::DEFAULT));
        self.run(dummy, password).await.map(|_| ())
    }

    /// The dummy hash of `cost`, the same one each time (within bounds).
    fn dummy_for(&self, cost: &HashCost) -> Arc<str> {
        let mut dummies = self.dummies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dummy) = dummies.get(cost) {
            return dummy.clone();
        }
        let dummy: Arc<str> = cost.dummy().into();
        if dummies.len() < MAX_DUMMIES {
            dummies.insert(*cost, dummy.clone());
        }
        dummy
    }

    async fn run(&self, hash: Arc<str>, password: Secret) -> Result<bool, Busy> {
        let (reply, answer) = oneshot::channel();
        self.shared.submit(Job {
            hash,
            password,
            reply,
        })?;
        let mut answer = answer;
        loop {
            match tokio::time::timeout(RESCUE_AFTER / 2, &mut answer).await {
                // Dropped unanswered: no thread could be had for it, or it panicked.
                Ok(answered) => return answered.map_err(|_| Busy),
                Err(_) => self.shared.rescue_if_stalled(),
            }
        }
    }
}

/// The CPU priority of a verification thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// The process's own.
    Normal,
    /// Only what the rest leaves (Linux `SCHED_IDLE`; elsewhere, Normal).
    Idle,
}

impl Priority {
    /// The priority of a verification with `waiting` others queued behind it.
    fn with_waiting(waiting: usize) -> Self {
        if waiting > FLOOD_QUEUE {
            Self::Idle
        } else {
            Self::Normal
        }
    }
}

/// Runs `work` on a new thread, for joining (its stack is freed when it has
/// ended). Verification threads get a stack that holds the default
/// parameters' work area; their priority cannot leak into threads that serve
/// requests (leaving the idle class again needs privileges, so tokio's
/// shared blocking threads are not used).
fn spawn_thread<T: Send + 'static>(
    name: &str,
    stack: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(work)
}

/// Moves the calling thread into the idle scheduling class; true when it is
/// there. Where that is refused (a seccomp filter) the thread stays as it
/// was and the verification still runs, at normal priority.
fn enter_idle_class() -> bool {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::ThreadPriority;
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        // The crate sets the policy, then a nice value (0 for the idle class,
        // where nice does not count): refused only when the process runs
        // niced, and harmless then. So the policy is read back.
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let _ = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
        thread_priority::unix::thread_schedule_policy().is_ok_and(|p| p == idle)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// True when this process may move a thread out of the idle scheduling
/// class (see [`Shared::promote_if_stalled`]): it has `CAP_SYS_NICE`, or an
/// `RLIMIT_NICE` that allows nice 0 (the kernel counts the idle class as
/// nice 20). Read from `/proc/self`; false where that cannot be read.
pub fn may_leave_idle_class() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let capabilities = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    // "Max nice priority   <soft>   <hard>": the soft limit counts.
    let nice = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max nice priority"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| match soft {
            "unlimited" => Some(u64::MAX),
            soft => soft.parse::<u64>().ok(),
        })
        .unwrap_or(0);
    capabilities & (1 << CAP_SYS_NICE) != 0 || nice >= 20
}

/// Moves `thread` (not yet joined) from the idle class back to normal
/// priority; true when it is there.
fn leave_idle_class<T>(thread: &JoinHandle<T>) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::thread::JoinHandleExt as _;
        use thread_priority::ThreadPriority;
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_schedule_policy_param,
        };
        let native = thread.as_pthread_t();
        let normal = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
        // The crate sets the policy of `native`, then the nice value given
        // (0) of the calling thread. So it is called from a thread of its
        // own: the supervisor keeps its nice value (and so do the threads it
        // starts later), and the policy is read back for the answer.
        let set = spawn_thread("portcullis-pool", SUPERVISOR_STACK, move || {
            let _ = set_thread_priority_and_policy(native, ThreadPriority::Os(Default::default()), normal);
        });
        set.is_ok_and(|set| set.join().is_ok())
            && thread_schedule_policy_param(native).is_ok_and(|(policy, _)| policy == normal)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::conformance::skip;

    #[tokio::test]
    async fn verifies_argon2id_hashes() {
        let h = hash_password(b"correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let pool = PasswordPool::new(1);
        assert_eq!(pool.verify(&h, Secret::new("correct horse")).await, Ok(true));
        assert_eq!(pool.verify(&h, Secret::new("wrong")).await, Ok(false));
        assert_eq!(pool.imitate(None, Secret::new("correct horse")).await, Ok(()));
        assert_eq!(pool.verify("not a hash", Secret::new("x")).await, Ok(false));
    }

    /// The scheduling policy in a /proc stat line (field 41; 5: SCHED_IDLE).
    #[cfg(target_os = "linux")]
    fn policy_in(stat: &str) -> Option<u32> {
        // pid (comm) state ppid ... : the comm is in parentheses, the rest after it.
        let (_, rest) = stat.rsplit_once(") ")?;
        rest.split(' ').nth(38)?.parse().ok()
    }

    /// The scheduling policy of the calling thread (None off Linux).
    pub(super) fn own_policy() -> Option<u32> {
        #[cfg(target_os = "linux")]
        return policy_in(&std::fs::read_to_string("/proc/thread-self/stat").ok()?);
        #[cfg(not(target_os = "linux"))]
        None
    }

    const SCHED_OTHER: u32 = 0;
    const SCHED_IDLE: u32 = 5;

    #[test]
    fn a_lone_sign_in_runs_at_normal_priority_and_a_flood_in_the_idle_class() {
        assert_eq!(Priority::with_waiting(0), Priority::Normal);
        assert_eq!(Priority::with_waiting(FLOOD_QUEUE), Priority::Normal);
        assert_eq!(Priority::with_waiting(FLOOD_QUEUE + 1), Priority::Idle);
        assert_eq!(Priority::with_waiting(MAX_QUEUED), Priority::Idle);
    }

    /// A hash that is quick to check (64 KiB, one pass).
    fn quick_hash(password: &str) -> String {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
    }

    /// Takes every place of `pool`, as running verifications would: what is
    /// submitted now waits.
    fn plug(pool: &PasswordPool) {
        pool.shared.state().threads = pool.shared.concurrency;
    }

    fn unplug(pool: &PasswordPool) {
        pool.shared.state().threads = 0;
    }

    /// Waits until every verification thread of `pool` has been joined.
    async fn settled(pool: &PasswordPool) {
        for _ in 0..500 {
            if pool.shared.state().threads == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("verification threads still running");
    }

    #[tokio::test]
    async fn a_flood_is_verified_on_few_threads_in_the_idle_class() {
        let pool = PasswordPool::new(1);
        let hash = quick_hash("right");
        plug(&pool);
        let mut waiting = Vec::new();
        for i in 0..12 {
            let (pool, hash) = (pool.clone(), hash.clone());
            let password = if i % 3 == 0 { "right" } else { "wrong" };
            waiting.push((
                i % 3 == 0,
                tokio::spawn(async move { pool.verify(&hash, Secret::new(password)).await }),
            ));
        }
        while pool.shared.state().queue.len() < 12 {
            tokio::task::yield_now().await;
        }
        unplug(&pool);
        // This one finds a free place and starts a thread; that thread goes
        // on with the twelve waiting.
        assert_eq!(pool.verify(&hash, Secret::new("right")).await, Ok(true));
        for (expected, task) in waiting {
            assert_eq!(task.await.unwrap(), Ok(expected));
        }
        settled(&pool).await;
        let state = pool.shared.state();
        assert_eq!(state.ran, 13);
        // The first thread ran its own job at normal priority, moved into the
        // idle class for the nine that had more than FLOOD_QUEUE behind them,
        // and handed the tenth to a new thread at normal priority (an idle
        // one cannot leave its class), which ran the last three. On a machine
        // busy enough that the idle-class thread got no core for
        // RESCUE_AFTER (other tests, a build), waiting callers rescued their
        // oldest verifications at normal priority, as they should: then only
        // the start is fixed.
        if state.rescued > 0 {
            eprintln!(
                "note: {} verifications rescued on a loaded machine; the order of classes is not checked",
                state.rescued
            );
            assert!(state.started <= 3, "{}", state.started);
            assert_eq!(state.classes.len(), 13);
            if cfg!(target_os = "linux") {
                assert_eq!(state.classes[0], Some(SCHED_OTHER));
            }
            return;
        }
        assert_eq!(state.started, 2);
        if cfg!(target_os = "linux") {
            let mut expected = vec![Some(SCHED_OTHER)];
            expected.extend([Some(SCHED_IDLE); 9]);
            expected.extend([Some(SCHED_OTHER); 3]);
            assert_eq!(state.classes, expected);
        }
    }

    #[tokio::test]
    async fn verification_threads_are_named_and_leave_the_caller_alone() {
        let thread = spawn_thread("portcullis-argon2", THREAD_STACK, || {
            enter_idle_class();
            (own_policy(), std::thread::current().name().map(str::to_owned))
        })
        .unwrap();
        let (policy, name) = thread.join().unwrap();
        assert_eq!(name.as_deref(), Some("portcullis-argon2"));
        if cfg!(target_os = "linux") {
            assert_eq!(policy, Some(SCHED_IDLE));
            assert_eq!(own_policy(), Some(SCHED_OTHER));
        }
    }

    /// Queues a right and a wrong password for `hash` behind a pool whose
    /// places are taken; their answers, in order.
    async fn queue_right_and_wrong(
        pool: &PasswordPool,
        hash: &str,
    ) -> Vec<tokio::task::JoinHandle<Result<bool, Busy>>> {
        let mut waiting = Vec::new();
        for password in ["right", "wrong"] {
            let pool = pool.clone();
            let hash = hash.to_owned();
            waiting.push(tokio::spawn(async move {
                pool.verify(&hash, Secret::new(password)).await
            }));
        }
        while pool.shared.state().queue.len() < 2 {
            tokio::task::yield_now().await;
        }
        waiting
    }

    #[tokio::test]
    async fn a_thread_that_cannot_be_had_answers_busy_and_strands_no_one() {
        let pool = PasswordPool::new(1);
        let hash = quick_hash("right");
        // No supervisor thread: this sign-in is busy, the place is free again.
        pool.shared.state().refuse.push_back(true);
        assert_eq!(pool.verify(&hash, Secret::new("right")).await, Err(Busy));
        assert_eq!(pool.shared.state().threads, 0);
        assert_eq!(pool.verify(&hash, Secret::new("right")).await, Ok(true));
        settled(&pool).await;

        // Sign-ins queued while a start failed (they saw the place taken)
        // are answered busy when no thread is left, not left waiting.
        plug(&pool);
        let queued = {
            let pool = pool.clone();
            let hash = hash.clone();
            tokio::spawn(async move { pool.verify(&hash, Secret::new("right")).await })
        };
        while pool.shared.state().queue.is_empty() {
            tokio::task::yield_now().await;
        }
        pool.shared.give_up_place();
        assert_eq!(queued.await.unwrap(), Err(Busy));

        // A verification thread that cannot be had: that sign-in is busy,
        // the ones queued behind it still run, and the place comes back.
        plug(&pool);
        let waiting = queue_right_and_wrong(&pool, &hash).await;
        pool.shared.state().refuse.extend([false, true]);
        unplug(&pool);
        assert_eq!(pool.verify(&hash, Secret::new("right")).await, Err(Busy));
        let answers: Vec<_> = futures_util::future::join_all(waiting).await;
        let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [Ok(true), Ok(false)]);
        settled(&pool).await;
    }

    #[test]
    fn a_runtime_that_shuts_down_leaves_the_pool_working() {
        let pool = PasswordPool::new(1);
        let hash = quick_hash("right");
        for _ in 0..3 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let started = {
                let (pool, hash) = (pool.clone(), hash.clone());
                runtime.spawn(async move { pool.verify(&hash, Secret::new("right")).await })
            };
            // Shut down with the verification submitted or not, running or not.
            runtime.block_on(tokio::task::yield_now());
            runtime.shutdown_background();
            drop(started);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert_eq!(pool.verify(&hash, Secret::new("right")).await, Ok(true));
            settled(&pool).await;
        });
    }

    /// Makes `pool` look like one whose every thread has sat in the idle
    /// class without progress since `ago`.
    fn stall(pool: &PasswordPool, ago: Duration) {
        let mut state = pool.shared.state();
        state.threads = pool.shared.concurrency;
        state.idle = pool.shared.concurrency;
        state.progress = Instant::now().checked_sub(ago);
    }

    async fn rescue_done(pool: &PasswordPool) {
        while pool.shared.state().rescuing {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Starts a supervisor, as a flood would, whose verification of `right`
    /// for `hash` runs in the idle class and waits for the sender returned
    /// before it hashes; with it, the answer and the supervisor thread.
    fn held_idle_verification(
        pool: &PasswordPool,
        hash: &str,
    ) -> (
        std::sync::mpsc::Sender<()>,
        oneshot::Receiver<bool>,
        std::thread::JoinHandle<()>,
    ) {
        let (release, hold) = std::sync::mpsc::channel();
        let (reply, answer) = oneshot::channel();
        {
            let mut state = pool.shared.state();
            state.hold = Some(hold);
            state.threads += 1;
        }
        let job = Job {
            hash: hash.into(),
            password: Secret::new("right"),
            reply,
        };
        let shared = pool.shared.clone();
        let supervisor = std::thread::spawn(move || shared.supervise(Priority::Idle, job));
        (release, answer, supervisor)
    }

    /// Waits until `pool` has a verification thread in the idle class, then
    /// makes it look stalled (no progress for 5 s).
    async fn stall_when_idle(pool: &PasswordPool) {
        until(pool, |s| s.idle > 0).await;
        pool.shared.state().progress = Instant::now().checked_sub(Duration::from_secs(5));
    }

    /// Waits up to 3 s for `done` to hold of `pool`'s state.
    async fn until(pool: &PasswordPool, done: impl Fn(&State) -> bool) {
        for _ in 0..300 {
            if done(&pool.shared.state()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not reached: {:?}", pool.shared.state());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_stalled_verification_leaves_the_idle_class_in_the_work_area_it_has() {
        let pool = PasswordPool::new(1);
        let hash = quick_hash("right");
        if !may_leave_idle_class() {
            skip::test(
                &skip::current_test(),
                "leaving the idle class is refused here (no CAP_SYS_NICE, RLIMIT_NICE < 20)",
            );
            return;
        }
        let (release, answer, supervisor) = held_idle_verification(&pool, &hash);
        stall_when_idle(&pool).await;
        // Within half RESCUE_AFTER its supervisor moves it out of the idle class.
        until(&pool, |s| s.promoted.is_some() || s.promotion_refused).await;
        assert!(
            !pool.shared.state().promotion_refused,
            "refused with the privileges for it"
        );
        // Sign-ins queue behind it, a flood's worth.
        let mut queued = Vec::new();
        for _ in 0..FLOOD_QUEUE + 2 {
            let (pool, hash) = (pool.clone(), hash.clone());
            queued.push(tokio::spawn(async move {
                pool.verify(&hash, Secret::new("wrong")).await
            }));
        }
        until(&pool, |s| s.queue.len() == FLOOD_QUEUE + 2).await;
        // No second rescue beside it: no extra thread takes one of them
        // (their callers look for a stall every half RESCUE_AFTER).
        pool.shared.state().progress = Instant::now().checked_sub(Duration::from_secs(5));
        tokio::time::sleep(RESCUE_AFTER).await;
        {
            let state = pool.shared.state();
            assert_eq!(
                (state.queue.len(), state.rescued, state.started),
                (FLOOD_QUEUE + 2, 1, 1)
            );
        }
        release.send(()).unwrap();
        assert_eq!(answer.await, Ok(true));
        for task in queued {
            assert_eq!(task.await.unwrap(), Ok(false));
        }
        settled(&pool).await;
        supervisor.join().unwrap();
        let state = pool.shared.state();
        assert_eq!((state.promoted, state.idle), (None, 0));
        if state.rescued > 1 {
            // A machine so busy that the idle-class thread stalled again:
            // promoted again, as it should be; then only the first is fixed.
            eprintln!("note: {} stalls on a loaded machine", state.rescued);
            assert_eq!(state.classes[0], Some(SCHED_OTHER));
            return;
        }
        // The held one ran at normal priority; its thread went back into the
        // idle class for the next (more than FLOOD_QUEUE waited behind it),
        // then handed the rest to a new thread at normal priority.
        assert_eq!(
            state.classes,
            [
                Some(SCHED_OTHER),
                Some(SCHED_IDLE),
                Some(SCHED_OTHER),
                Some(SCHED_OTHER),
                Some(SCHED_OTHER)
            ]
        );
        assert_eq!(state.started, 2);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_a_thread_inside_a_verification_leaves_the_idle_class() {
        if !may_leave_idle_class() {
            skip::test(
                &skip::current_test(),
                "leaving the idle class is refused here (no CAP_SYS_NICE, RLIMIT_NICE < 20)",
            );
            return;
        }
        let pool = PasswordPool::new(1);
        // A thread in the idle class, as a verification thread between two
        // verifications is; it reports its class when told to go on.
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        let (entered, idle) = std::sync::mpsc::channel::<bool>();
        let thread = spawn_thread("portcullis-argon2", THREAD_STACK, move || {
            entered.send(enter_idle_class()).unwrap();
            let _ = wait.recv();
            own_policy()
        })
        .unwrap();
        assert!(idle.recv().unwrap());
        {
            let mut state = pool.shared.state();
            state.threads = 1;
            state.idle = 1;
            state.progress = Instant::now().checked_sub(Duration::from_secs(5));
        }
        pool.shared.promote_if_stalled(&thread);
        assert_eq!(
            pool.shared.state().promoted,
            None,
            "promoted between verifications"
        );
        // Inside a verification: promoted.
        pool.shared.state().verifying.push(thread.thread().id());
        pool.shared.promote_if_stalled(&thread);
        assert_eq!(pool.shared.state().promoted, Some(thread.thread().id()));
        go_on.send(()).unwrap();
        assert_eq!(thread.join().unwrap(), Some(SCHED_OTHER));
        assert!(!pool.shared.state().promotion_refused);
    }

    #[tokio::test]
    async fn where_leaving_the_idle_class_is_refused_a_stall_is_rescued_on_an_extra_thread() {
        let pool = PasswordPool::new(1);
        let hash = quick_hash("right");
        pool.shared.state().refuse_promotion = true;
        let (release, answer, supervisor) = held_idle_verification(&pool, &hash);
        if !cfg!(target_os = "linux") {
            // No idle class: nothing stalls.
            release.send(()).unwrap();
            supervisor.join().unwrap();
            return;
        }
        let queued = {
            let (pool, hash) = (pool.clone(), hash.clone());
            tokio::spawn(async move { pool.verify(&hash, Secret::new("right")).await })
        };
        until(&pool, |s| s.queue.len() == 1).await;
        stall_when_idle(&pool).await;
        // The supervisor finds the promotion refused; the queued sign-in's
        // caller then runs it on a rescue thread, while the held one waits.
        assert_eq!(
            tokio::time::timeout(RESCUE_AFTER * 3, queued)
                .await
                .unwrap()
                .unwrap(),
            Ok(true)
        );
        {
            let state = pool.shared.state();
            assert!(state.promotion_refused);
            assert_eq!((state.rescued, state.promoted), (1, None));
        }
        release.send(()).unwrap();
        assert_eq!(answer.await, Ok(true));
        supervisor.join().unwrap();
        settled(&pool).await;
    }

    #[tokio::test]
    async fn a_stalled_flood_still_lets_the_oldest_sign_in_through_at_normal_priority() {
        let pool = PasswordPool::new(1);
        let hash = quick_hash("right");
        pool.shared.state().promotion_refused = true;
        stall(&pool, Duration::from_secs(5));
        // The caller waits half RESCUE_AFTER, finds no progress, and its
        // verification runs on a rescue thread at normal priority.
        let started = Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(10), pool.verify(&hash, Secret::new("right"))).await;
        assert_eq!(answer, Ok(Ok(true)), "no rescue");
        let waited = started.elapsed();
        assert!(
            waited >= RESCUE_AFTER / 2 && waited < RESCUE_AFTER * 3,
            "{waited:?}"
        );
        {
            let state = pool.shared.state();
            assert_eq!((state.rescued, state.threads), (1, 1));
            if cfg!(target_os = "linux") {
                assert_eq!(state.classes, [Some(SCHED_OTHER)]);
            }
        }
        rescue_done(&pool).await;
        // Only the oldest goes, one at a time; a rescue counts as progress.
        let mut waiting = queue_right_and_wrong(&pool, &hash).await;
        stall(&pool, Duration::from_secs(5));
        pool.shared.state().rescuing = true;
        pool.shared.rescue_if_stalled();
        assert_eq!(pool.shared.state().queue.len(), 2, "a second rescue at once");
        pool.shared.state().rescuing = false;
        pool.shared.rescue_if_stalled();
        assert_eq!(pool.shared.state().queue.len(), 1);
        pool.shared.rescue_if_stalled();
        assert_eq!(pool.shared.state().queue.len(), 1, "rescued while one runs");
        let first = waiting.remove(0).await.unwrap();
        assert_eq!(first, Ok(true));
        rescue_done(&pool).await;
        assert!(pool.shared.state().progress.unwrap().elapsed() < RESCUE_AFTER);
        pool.shared.rescue_if_stalled();
        assert_eq!(pool.shared.state().queue.len(), 1, "rescued despite progress");
        // A thread at normal priority, however slow, is no stall.
        stall(&pool, Duration::from_secs(5));
        pool.shared.state().idle = 0;
        pool.shared.rescue_if_stalled();
        assert_eq!(
            pool.shared.state().queue.len(),
            1,
            "rescued a normal thread's queue"
        );
        unplug(&pool);
        pool.shared.state().idle = 0;
        assert_eq!(pool.verify(&hash, Secret::new("x")).await, Ok(false));
        assert_eq!(waiting.remove(0).await.unwrap(), Ok(false));
        settled(&pool).await;
        assert_eq!(pool.shared.state().rescued, 2);
    }

    #[tokio::test]
    async fn a_sign_in_dropped_while_waiting_is_not_run() {
        let pool = PasswordPool::new(1);
        plug(&pool);
        for _ in 0..5 {
            // The client hangs up while its check waits for the busy pool.
            let waited = tokio::time::timeout(
                std::time::Duration::from_millis(10),
                pool.imitate(None, Secret::new("x")),
            )
            .await;
            assert!(waited.is_err(), "it was still waiting");
        }
        unplug(&pool);
        assert_eq!(pool.imitate(None, Secret::new("x")).await, Ok(()));
        settled(&pool).await;
        let state = pool.shared.state();
        assert_eq!((state.ran, state.started), (1, 1));
        assert!(state.queue.is_empty());
    }

    #[test]
    fn the_work_area_is_wiped_after_use() {
        let argon2 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        );
        let mut area = vec![Block::new(); 64];
        let mut out = [0u8; 32];
        assert!(hash_in(&argon2, b"pw", b"saltsaltsalt", &mut out, &mut area));
        assert_ne!(out, [0u8; 32]);
        assert!(area.iter().all(|b| b.as_ref().iter().all(|w| *w == 0)));
    }

    #[test]
    fn the_work_area_is_wiped_when_hashing_panics() {
        let mut area = vec![Block::new(); 4];
        area.iter_mut().for_each(|b| b.as_mut().fill(0x5a5a));
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _area = WipedOnDrop(&mut area);
            panic!("argon2 gave up");
        }));
        assert!(unwound.is_err());
        assert!(area.iter().all(|b| b.as_ref().iter().all(|w| *w == 0)));
    }

    #[tokio::test]
    async fn a_verification_that_panics_is_not_left_counted_as_running() {
        let pool = PasswordPool::new(1);
        let hash = quick_hash("right");
        pool.shared.state().panic_next = true;
        // A lone sign-in runs at normal priority: no idle-class bookkeeping
        // would clean up after it.
        assert_eq!(pool.verify(&hash, Secret::new("right")).await, Err(Busy));
        assert!(
            pool.shared.state().verifying.is_empty(),
            "{:?}",
            pool.shared.state()
        );
        // The pool goes on.
        assert_eq!(pool.verify(&hash, Secret::new("right")).await, Ok(true));
        assert!(pool.shared.state().verifying.is_empty());
    }

    #[tokio::test]
    async fn refuses_past_the_queue_bound() {
        let pool = PasswordPool::new(1);
        plug(&pool);
        let mut answers = Vec::new();
        for _ in 0..MAX_QUEUED {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            let job = Job {
                hash: pool.dummy_for(&HashCost::DEFAULT),
                password: Secret::new("x"),
                reply,
            };
            pool.shared.submit(job).unwrap();
        }
        assert_eq!(pool.imitate(None, Secret::new("x")).await, Err(Busy));
        // Callers that have gone leave their places to new ones.
        answers.truncate(MAX_QUEUED - 1);
        let waited = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            pool.imitate(None, Secret::new("x")),
        )
        .await;
        assert!(waited.is_err(), "it waited instead of being refused");
    }

    #[test]
    fn a_dummy_hash_costs_what_a_real_one_of_its_cost_costs() {
        let pool = PasswordPool::new(1);
        let real_string = hash_password(b"x").unwrap();
        let cost = HashCost::of(&real_string).unwrap();
        assert_eq!(cost, HashCost::DEFAULT);
        let dummy_string = pool.dummy_for(&cost);
        let dummy = PasswordHash::new(&dummy_string).unwrap();
        let real = PasswordHash::new(&real_string).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.salt.map(|s| s.len()), real.salt.map(|s| s.len()));
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        // The same dummy each time in a pool; another pool has its own.
        assert_eq!(dummy_string, pool.dummy_for(&cost));
        assert_ne!(dummy_string, PasswordPool::new(1).dummy_for(&cost));

        // An operator's own parameters, variant and output length.
        let theirs = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(4096, 3, 2, Some(64)).unwrap(),
        )
        .hash_password(b"x")
        .unwrap()
        .to_string();
        let cost = HashCost::of(&theirs).unwrap();
        assert_eq!(cost.params(), "m=4096, t=3, p=2");
        let dummy = pool.dummy_for(&cost);
        assert_eq!(HashCost::of(&dummy), Some(cost));
        assert!(dummy.starts_with("$argon2i$v=16$m=4096,t=3,p=2$"), "{dummy}");
        assert_eq!(HashCost::of("not a hash"), None);
    }

    #[tokio::test]
    async fn agrees_with_argon2_on_other_variants_and_parameters() {
        use argon2::PasswordVerifier as _;
        let pool = PasswordPool::new(1);
        let cases = [
            (
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(64, 1, 1, None).unwrap(),
            ),
            (
                Algorithm::Argon2i,
                Version::V0x13,
                Params::new(256, 3, 2, Some(16)).unwrap(),
            ),
            (
                Algorithm::Argon2d,
                Version::V0x10,
                Params::new(128, 2, 1, Some(64)).unwrap(),
            ),
            // Larger than the defaults: a work area on the heap.
            (
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(DEFAULT_BLOCKS as u32 + 1024, 1, 1, None).unwrap(),
            ),
        ];
        for (algorithm, version, params) in cases {
            let argon2 = Argon2::new(algorithm, version, params);
            let hash = argon2.hash_password(b"right").unwrap().to_string();
            let parsed = PasswordHash::new(&hash).unwrap();
            for (password, expected) in [(&b"right"[..], true), (b"wrong", false), (b"right", true)] {
                let reference = Argon2::default().verify_password(password, &parsed).is_ok();
                assert_eq!(reference, expected, "{hash}");
                let ours = pool
                    .verify(&hash, Secret::new(std::str::from_utf8(password).unwrap()))
                    .await;
                assert_eq!(ours, Ok(expected), "{hash}");
            }
        }
        // A hash asking for more memory than can be had is a mismatch, not an abort.
        let huge = "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(pool.verify(huge, Secret::new("x")).await, Ok(false));
    }
}
