//! What both binaries, `etcdimg` and `migrate`, do to the host, written once so that a fix
//! reaches both:
//!
//! - [`fs`]: atomic, durable writes (temp file, fsync, rename, directory fsync) with the mode
//!   the umask gives, temp names that never collide across runs or container restarts (random,
//!   never a pid alone), and an error type that names its path;
//! - [`lock`]: exclusive advisory locks (`flock`) with bounded waits that name the holder;
//! - [`process`]: running programs with captured output, timeouts, a cleaned environment,
//!   reaping by `wait4` (peak memory), and errors that show the command line, the status and
//!   the tail of stderr;
//! - [`ports`]: loopback ports for servers the binaries (and their tests) start.
//!
//! It depends on libc, tempfile and thiserror only: migrate is built static for five arches,
//! and each of those it links already. Nothing here prints; callers report.

pub mod fs;
pub mod lock;
pub mod ports;
pub mod process;
