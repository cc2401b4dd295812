//! Loopback ports for the etcd servers that `etcdimg test`, `migrate` and the test suites start.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the ports start; they stay below Linux's default ephemeral range (32768-60999).
const FIRST: u32 = 20_000;
/// How many ports are drawn from.
const SPAN: u32 = 12_000;

/// A loopback port that nothing listens on right now, never handed out twice by this process.
///
/// `bind(":0")` would hand out a port from the ephemeral range, which every outgoing
/// connection on the host also draws from: between the probe and the server's own bind (for
/// a container, seconds later), a connection may take it ("address already in use"). Ports
/// below that range are only taken by explicit binds, each process starts at its own offset
/// (by pid), and a counter keeps one process from handing out a port twice.
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 100) * (SPAN / 100);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        if n >= SPAN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "no free loopback port left in {FIRST}..{}; stop some of the servers on 127.0.0.1",
                    FIRST + SPAN
                ),
            ));
        }
        let port = (FIRST + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(
            ports.iter().all(|&p| (20_000..32_000).contains(&p)),
            "{ports:?}"
        );
        // A port someone listens on is skipped.
        let next = free_port().unwrap() + 1;
        let held = TcpListener::bind(("127.0.0.1", next));
        let after = free_port().unwrap();
        if held.is_ok() {
            assert_ne!(after, next);
        }
    }
}
