//! The `portcullis` binary; see [`portcullis::cli`].

/// mimalloc rather than the system allocator: a proxied request allocates
/// a few dozen small blocks, and mimalloc's per-thread free lists serve them
/// in fewer instructions than glibc's malloc (see bench/results/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
