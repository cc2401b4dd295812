//! Loopback ports for the servers the tests start (shared by both crates' tests).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the test ports start; they stay below Linux's default ephemeral range (32768-60999).
const FIRST: u32 = 20_000;
/// How many ports the tests draw from.
const SPAN: u32 = 12_000;

/// A loopback port that nothing listens on right now, never handed out twice by this process.
///
/// `bind(":0")` would hand out a port from the ephemeral range, which every outgoing
/// connection on the host also draws from: between the probe and the server's own bind, a
/// parallel test's connection may take it ("address already in use"). Ports below that range
/// are only taken by explicit binds, each process starts at its own offset (by pid), and a
/// counter keeps the tests of one process from sharing a port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 100) * (SPAN / 100);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(
            n < SPAN,
            "no free loopback port left in {FIRST}..{}",
            FIRST + SPAN
        );
        let port = (FIRST + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
