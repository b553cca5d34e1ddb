//! Giving freed memory back to the operating system.
//!
//! The binary allocates with mimalloc (see `main.rs`). mimalloc hands the
//! pages of freed memory back to the system ("purges" them) once they have
//! been free for its purge delay (1 s), but only when a thread frees or
//! allocates pages, and it keeps a thread's emptied pages in that thread's
//! heap for reuse. A serving thread that went quiet after a load therefore
//! stayed at the load's size for good (6 MB more than it needed once the
//! upstream pool had closed its idle connections), and a sign-in just after
//! a load stacked its argon2 work area (19 MiB) on top of all of it.
//!
//! So each serving thread runs [`upkeep`]: once a second it lets mimalloc
//! hand the thread's emptied pages back to the process's arenas and purge
//! what has been free past the delay (a quiet thread gives back most of what
//! a load freed within a few seconds; the few pages mimalloc keeps retired
//! for reuse follow within 16 passes), and when a password verification
//! thread is about to start ([`make_room`]) it gives back everything free at
//! once, before the work area is faulted in. Neither touches memory in use.
//! The periodic pass finds little under a steady load, and `make_room` acts
//! at most once per [`UPKEEP_EVERY`]: a forced collection purges what the
//! serving threads would otherwise reuse, and its pages are faulted in again
//! (purging at every free, `MIMALLOC_PURGE_DELAY=0`, costs a page fault and
//! 4 to 5 us per request; see `bench/results/`), so sign-ins paced to start
//! verification threads back to back must not force one each.
//!
//! Where the global allocator is not mimalloc (the tests, an embedder's
//! choice) these calls find mimalloc's heap for the thread unused and do
//! nothing.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How often a serving thread gives back what has been free for a while, and
/// how often at most [`make_room`] has them give back everything free.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Wakes the serving threads' [`upkeep`] when a password verification is
/// about to need its work area.
static ROOM: Room = Room::new();

/// Asks every serving thread's [`upkeep`] to give back all its free memory
/// now: a verification thread, with its 19 MiB work area, is about to start.
/// Returns at once (the threads do it between requests; a thread busy with a
/// request does it after that request). At most once per [`UPKEEP_EVERY`];
/// calls in between do nothing.
pub fn make_room() {
    ROOM.make(Instant::now());
}

/// A wake-up for the upkeep tasks, given at most once per [`UPKEEP_EVERY`].
struct Room {
    wanted: Notify,
    /// When the tasks were last woken.
    made: Mutex<Option<Instant>>,
}

impl Room {
    const fn new() -> Self {
        Self {
            wanted: Notify::const_new(),
            made: Mutex::new(None),
        }
    }

    /// Wakes the waiting tasks unless it did less than [`UPKEEP_EVERY`]
    /// before `now`; true when it did.
    fn make(&self, now: Instant) -> bool {
        {
            // Nothing is left half-changed under this lock.
            let mut made = self.made.lock().unwrap_or_else(PoisonError::into_inner);
            if made.is_some_and(|t| now.saturating_duration_since(t) < UPKEEP_EVERY) {
                return false;
            }
            *made = Some(now);
        }
        self.wanted.notify_waiters();
        true
    }
}

/// Runs for as long as the calling thread's runtime runs: once per
/// [`UPKEEP_EVERY`], lets the allocator give back this thread's freed memory
/// (what has been free past its purge delay), and on [`make_room`] all this
/// thread's free memory at once. Spawn it on each serving thread (a
/// current-thread runtime: the allocator's heap is per thread).
pub async fn upkeep() {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => mimalloc_collect::collect(false),
            () = ROOM.wanted.notified() => mimalloc_collect::collect(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a task waiting on `room` is woken by `room.make(at)`.
    fn wakes(room: &Room, at: Instant) -> bool {
        let notified = room.wanted.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered as a waiter before the call, as an upkeep task would be.
        notified.as_mut().enable();
        let made = room.make(at);
        let woken = notified
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            .is_ready();
        assert_eq!(made, woken, "make's answer says whether it woke the waiter");
        woken
    }

    #[test]
    fn the_upkeep_tasks_are_woken_at_most_once_a_period() {
        let room = Room::new();
        let t0 = Instant::now();
        assert!(wakes(&room, t0), "the first call wakes the waiting tasks");
        assert!(
            !wakes(&room, t0 + UPKEEP_EVERY / 2),
            "a call within the period wakes nobody"
        );
        assert!(
            !wakes(&room, t0 + UPKEEP_EVERY - Duration::from_millis(1)),
            "nor one just before its end"
        );
        assert!(
            wakes(&room, t0 + UPKEEP_EVERY),
            "a call a period later wakes them again"
        );
        // A clock reading from before the last one (another thread's) is
        // within the period.
        assert!(!wakes(&room, t0));
    }
}
