//! Password hashing and verification (argon2id) on a bounded pool of threads.
//!
//! Argon2 is deliberately expensive (19 MiB, two passes), so a login flood
//! could starve the proxied traffic sharing the machine. Verifications run
//! at most `max(1, cores / 2)` at once, with a bounded queue behind them: past
//! it, logins are refused as busy (429) instead of queueing without end. Each
//! runs on a thread of its own. While more than [`FLOOD_QUEUE`] verifications
//! wait, a new one runs in Linux's idle scheduling class (`SCHED_IDLE`): it
//! gets the CPU time the serving threads leave, and a woken serving thread
//! takes its core at once, so a login flood cannot take the CPU from signed-in
//! traffic. A lone sign-in runs at normal priority, so a busy host (the
//! application behind the gateway, say) does not stall it. Unknown users are
//! checked against a dummy hash with the same parameters, so their answers
//! take as long as a wrong password.
//!
//! Memory: a verification's argon2 work area (19 MiB with the default
//! parameters) lives on its thread's stack, so at most `concurrency` exist at
//! once, and each goes back to the operating system when its thread ends:
//! after a sign-in, or a flood, the gateway's resident memory falls back to
//! what it was. (A heap area, freed or pooled, stayed resident: the allocator
//! keeps freed memory.) A work area is wiped after use: it holds
//! password-derived state.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, Version};
use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;
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
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let hashed = if blocks <= DEFAULT_BLOCKS {
        let mut area = [Block::new(); DEFAULT_BLOCKS];
        hash_in(&argon2, password, salt, &mut out, &mut area[..blocks])
    } else {
        let mut area = Vec::new();
        if area.try_reserve_exact(blocks).is_err() {
            return false;
        }
        area.resize(blocks, Block::new());
        hash_in(&argon2, password, salt, &mut out, &mut area)
    };
    let matched = hashed && bool::from(out.as_slice().ct_eq(expected.as_bytes()));
    out.zeroize();
    matched
}

/// Hashes `password` into `out` in the work area `area`, then wipes the area.
fn hash_in(argon2: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8], area: &mut [Block]) -> bool {
    let hashed = argon2.hash_password_into_with_memory(password, salt, out, &mut *area);
    area.iter_mut().for_each(zeroize::Zeroize::zeroize);
    hashed.is_ok()
}

/// A PHC string with the default parameters, a random salt and a random
/// output: checking a password against it costs what checking a real
/// default hash costs, and nothing matches it. No hashing needed to make it.
fn dummy_hash() -> String {
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let p = Params::DEFAULT;
    format!(
        "${}$v={}$m={},t={},p={}${}${}",
        Algorithm::Argon2id.as_str(),
        u32::from(Version::V0x13),
        p.m_cost(),
        p.t_cost(),
        p.p_cost(),
        b64.encode(crate::crypto::random_bytes(16)),
        b64.encode(crate::crypto::random_bytes(Params::DEFAULT_OUTPUT_LEN)),
    )
}

/// Verifies passwords on a bounded pool.
#[derive(Debug, Clone)]
pub struct PasswordPool {
    permits: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    dummy_hash: Arc<str>,
}

impl PasswordPool {
    /// A pool running at most `concurrency` verifications at once, each in
    /// its own work area (19 MiB with the default parameters).
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queued: Arc::new(AtomicUsize::new(0)),
            dummy_hash: dummy_hash().into(),
        }
    }

    /// A pool sized for this machine: half its cores, at least one. The other
    /// half stays with the proxied traffic during a login flood, and memory
    /// stays bounded at one 19 MiB work area per permit.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self::new(cores / 2)
    }

    /// True when `password` matches `hash`. With `hash = None` (unknown user)
    /// the dummy hash is checked, the work is the same, and the answer is false.
    pub async fn verify(&self, hash: Option<&str>, password: Secret) -> Result<bool, Busy> {
        let waiting = Waiting::enter(&self.queued);
        if waiting.ahead >= MAX_QUEUED {
            return Err(Busy);
        }
        let permit = self.permits.clone().acquire_owned().await;
        drop(waiting);
        let Ok(permit) = permit else { return Err(Busy) };
        let known = hash.is_some();
        let hash: Arc<str> = hash.map_or_else(|| self.dummy_hash.clone(), Arc::from);
        let priority = Priority::with_waiting(self.queued.load(Ordering::SeqCst));
        // No thread could be had (a process or memory limit): busy, not an
        // error page (the permit goes back as this returns).
        let (verification, thread) =
            run_on_own_thread(priority, move || verify_on_this_thread(&hash, password.expose()))
                .map_err(|_| Busy)?;
        // The permit goes back once the thread has ended, and with it its
        // stack (the work area) has gone back to the system: at most
        // `concurrency` work areas are ever resident, even when an idle-class
        // thread takes a while to finish after answering.
        tokio::task::spawn_blocking(move || {
            let _ = thread.join();
            drop(permit);
        });
        let result = verification.await.unwrap_or(false);
        Ok(known && result)
    }
}

/// One verification counted in a pool's queue until this is dropped: also
/// when the request is dropped while it waits (a client hanging up), so the
/// count, which picks the priority and bounds the queue, never drifts up.
struct Waiting<'a> {
    queued: &'a AtomicUsize,
    /// How many were queued before this one.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(queued: &'a AtomicUsize) -> Self {
        let ahead = queued.fetch_add(1, Ordering::SeqCst);
        Self { queued, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
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

/// Runs `work` on a new thread with `priority`: its result to come and the
/// thread, for joining (its stack is freed when it has ended). A
/// thread per verification costs tens of microseconds against an argon2
/// run's tens of milliseconds, and its priority cannot leak into threads that
/// serve requests (leaving the idle class again needs privileges, so tokio's
/// shared blocking threads are not used).
fn run_on_own_thread<T: Send + 'static>(
    priority: Priority,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<(tokio::sync::oneshot::Receiver<T>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("portcullis-argon2".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            if priority == Priority::Idle {
                enter_idle_class();
            }
            let _ = tx.send(work());
        })?;
    Ok((rx, thread))
}

/// Moves the calling thread into the idle scheduling class. Where that is
/// refused (a seccomp filter) the thread stays as it was and the
/// verification still runs, at normal priority.
fn enter_idle_class() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::ThreadPriority;
        use thread_priority::unix::{
            NormalThreadSchedulePolicy, ThreadSchedulePolicy, set_thread_priority_and_policy,
            thread_native_id,
        };
        // The crate sets the policy, then a nice value (0 for the idle class,
        // where nice does not count): refused only when the process runs
        // niced, and harmless then. Nothing to do about either failure.
        let _ = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_argon2id_hashes() {
        let h = hash_password(b"correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let pool = PasswordPool::new(1);
        assert_eq!(
            pool.verify(Some(&h), Secret::new("correct horse")).await,
            Ok(true)
        );
        assert_eq!(pool.verify(Some(&h), Secret::new("wrong")).await, Ok(false));
        assert_eq!(pool.verify(None, Secret::new("correct horse")).await, Ok(false));
        assert_eq!(pool.verify(Some("not a hash"), Secret::new("x")).await, Ok(false));
    }

    /// The scheduling policy in a /proc stat line (field 41; 5: SCHED_IDLE).
    #[cfg(target_os = "linux")]
    fn policy_in(stat: &str) -> Option<u32> {
        // pid (comm) state ppid ... : the comm is in parentheses, the rest after it.
        let (_, rest) = stat.rsplit_once(") ")?;
        rest.split(' ').nth(38)?.parse().ok()
    }

    /// The scheduling policy of the calling thread.
    #[cfg(target_os = "linux")]
    fn own_policy() -> Option<u32> {
        policy_in(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
    }

    #[test]
    fn a_lone_sign_in_runs_at_normal_priority_and_a_flood_in_the_idle_class() {
        assert_eq!(Priority::with_waiting(0), Priority::Normal);
        assert_eq!(Priority::with_waiting(FLOOD_QUEUE), Priority::Normal);
        assert_eq!(Priority::with_waiting(FLOOD_QUEUE + 1), Priority::Idle);
        assert_eq!(Priority::with_waiting(MAX_QUEUED), Priority::Idle);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn verification_threads_take_their_scheduling_class() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_IDLE: u32 = 5;
        let on_thread = |priority| async move {
            run_on_own_thread(priority, || {
                (own_policy(), std::thread::current().name().map(str::to_owned))
            })
            .unwrap()
            .0
            .await
            .unwrap()
        };
        let name = Some("portcullis-argon2".to_owned());
        assert_eq!(
            on_thread(Priority::Normal).await,
            (Some(SCHED_OTHER), name.clone())
        );
        assert_eq!(on_thread(Priority::Idle).await, (Some(SCHED_IDLE), name));
        // The caller's thread is untouched.
        assert_eq!(own_policy(), Some(SCHED_OTHER));
    }

    #[tokio::test]
    async fn a_sign_in_dropped_while_waiting_leaves_the_queue() {
        let pool = PasswordPool::new(1);
        let held = pool.permits.clone().acquire_owned().await.unwrap();
        for _ in 0..5 {
            // The client hangs up while its check waits for the busy pool.
            let waited = tokio::time::timeout(
                std::time::Duration::from_millis(10),
                pool.verify(None, Secret::new("x")),
            )
            .await;
            assert!(waited.is_err(), "it was still waiting");
        }
        assert_eq!(pool.queued.load(Ordering::SeqCst), 0);
        drop(held);
        assert_eq!(pool.verify(None, Secret::new("x")).await, Ok(false));
        assert_eq!(pool.queued.load(Ordering::SeqCst), 0);
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

    #[tokio::test]
    async fn refuses_past_the_queue_bound() {
        let pool = PasswordPool::new(1);
        pool.queued.store(MAX_QUEUED, Ordering::SeqCst);
        assert_eq!(pool.verify(None, Secret::new("x")).await, Err(Busy));
    }

    #[tokio::test]
    async fn the_dummy_hash_costs_what_a_real_one_costs() {
        let dummy_string = dummy_hash();
        let real_string = hash_password(b"x").unwrap();
        let dummy = PasswordHash::new(&dummy_string).unwrap();
        let real = PasswordHash::new(&real_string).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params);
        assert_eq!(dummy.salt.map(|s| s.len()), real.salt.map(|s| s.len()));
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        // Two pools do not share a dummy.
        assert_ne!(dummy_string, dummy_hash());
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
                    .verify(Some(&hash), Secret::new(std::str::from_utf8(password).unwrap()))
                    .await;
                assert_eq!(ours, Ok(expected), "{hash}");
            }
        }
        // A hash asking for more memory than can be had is a mismatch, not an abort.
        let huge = "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(pool.verify(Some(huge), Secret::new("x")).await, Ok(false));
    }
}
