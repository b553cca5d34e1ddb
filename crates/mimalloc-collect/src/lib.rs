//! A safe wrapper for mimalloc's `mi_collect`, the one call into the
//! allocator Portcullis makes (see `src/memory.rs` there for why). A crate of
//! its own so that the main crate keeps `unsafe_code = "forbid"`: this file
//! holds the only `unsafe` block.

/// Lets mimalloc give the calling thread's freed memory back to the
/// operating system. `false`: the thread's emptied pages go back to the
/// process's arenas and spans free for longer than the purge delay are
/// purged; `true`: every free page of the thread, and every free span of the
/// arenas (unless another thread is purging them just then), at once.
///
/// Does nothing for a thread whose mimalloc heap was never set up (mimalloc
/// is not the global allocator, or the thread has not allocated with it).
pub fn collect(force: bool) {
    // SAFETY: `mi_collect` takes a plain bool and returns nothing; it has no
    // preconditions. It works on the calling thread's own heap (returning at
    // once when the thread has none), frees only pages none of whose blocks
    // is in use, and purges arena spans it has first claimed atomically, under
    // mimalloc's own synchronisation. No pointer crosses the boundary.
    unsafe { libmimalloc_sys::mi_collect(force) }
}
