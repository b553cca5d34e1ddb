//! Giving freed memory back to the operating system.
//!
//! The binary allocates with mimalloc (see `main.rs`). mimalloc hands the
//! pages of freed memory back to the system ("purges" them) some time after
//! they fell free (its purge delay, 1 s), but only when the thread that
//! freed them allocates or frees again, and it keeps a thread's emptied pages
//! for that thread while it is busy. A serving thread that goes quiet after a
//! load therefore stayed at the load's size for good (8 to 10 MB more than
//! it needed after 128 connections), and a sign-in just after a load
//! stacked its argon2 work area (19 MiB) on top of all of it.
//!
//! So each serving thread runs [`upkeep`]: once a second it lets mimalloc
//! free its emptied pages and purge what has been free for longer than the
//! delay (a quiet thread falls back to what it uses within about two
//! seconds), and when a password verification thread is about to start
//! ([`make_room`]) it gives back everything free at once, before the work
//! area is faulted in. Neither touches memory in use, and neither runs per
//! request: under a steady load the periodic pass finds little that is free
//! for long. (Purging at once on every free, `MIMALLOC_PURGE_DELAY=0`, costs
//! a page fault and 4 to 5 us per request; see `bench/results/`.)
//!
//! Where the global allocator is not mimalloc (the tests, an embedder's
//! choice) these calls find mimalloc's own heap for the thread unused and do
//! nothing.

use std::time::Duration;

use tokio::sync::Notify;

/// How often a serving thread gives back what has been free for a while.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Woken when a password verification is about to need its work area.
static ROOM_WANTED: Notify = Notify::const_new();

/// Asks every serving thread's [`upkeep`] to give back all its free memory
/// now: a verification thread, with its 19 MiB work area, is about to start.
/// Returns at once (the threads do it between requests); a thread busy with
/// a request does it after that request.
pub fn make_room() {
    ROOM_WANTED.notify_waiters();
}

/// Runs for as long as the calling thread's runtime runs: once per
/// [`UPKEEP_EVERY`], lets the allocator give back this thread's memory that
/// has been free for longer than its purge delay, and on [`make_room`] all
/// this thread's free memory at once. Spawn it on each serving thread (a
/// current-thread runtime: the allocator's per-thread heap is the thread's
/// own).
pub async fn upkeep() {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => give_back(false),
            () = ROOM_WANTED.notified() => give_back(true),
        }
    }
}

/// mimalloc's collection of the calling thread's heap: with `all`, every
/// free page of the thread and every free span of the process at once; else
/// only what has been free for longer than the purge delay.
#[allow(unsafe_code, reason = "one FFI call into the allocator, see below")]
fn give_back(all: bool) {
    // SAFETY: `mi_collect` takes a plain bool and has no preconditions: it
    // works on the calling thread's own heap (doing nothing when the thread
    // has none) and on mimalloc's process-wide free spans under its own
    // synchronisation. No pointer crosses the boundary.
    unsafe { libmimalloc_sys::mi_collect(all) }
}
