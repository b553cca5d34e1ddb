// Included (`include!`) by every test binary that starts servers on ports it
// picks first: one way to pick them.

/// A port free now that stays free until a server started later binds it.
///
/// Picked below Linux's ephemeral range (32768-60999 by default): `bind(0)`
/// and outgoing connections take their ports from that range, so a port taken
/// here cannot be handed to another test's server or client in between (a
/// port got by binding port 0 could, and a busy machine then let a test talk
/// to another test's server). Each process starts at its own offset and walks
/// on, so concurrent test binaries do not pick the same ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 97) * 123;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}
