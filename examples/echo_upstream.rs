//! The demo's echo app on its own, as a dummy upstream for benchmarks
//! (`bench/proxy.sh`) and manual tests.
//!
//! ```sh
//! cargo run --release --example echo_upstream -- 127.0.0.1:24181
//! curl http://127.0.0.1:24181/small     # "ok\n": the benchmarks' request
//! ```
//!
//! The optional second argument sets the number of runtime worker threads
//! (default: one per core).

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = match args.next().as_deref().unwrap_or("127.0.0.1:24181").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("usage: echo_upstream [ADDR] [THREADS]: bad address: {e}");
            return ExitCode::from(64);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.next() {
        match threads.parse::<usize>() {
            Ok(n) if n > 0 => {
                builder.worker_threads(n);
            }
            _ => {
                eprintln!("usage: echo_upstream [ADDR] [THREADS]: bad thread count");
                return ExitCode::from(64);
            }
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match portcullis::demo::spawn_echo(addr).await {
            Ok(local) => println!("echo upstream listening on http://{local}"),
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
