//! One file per verb. Each is thin: settings in, one pipeline call, a result out.

pub mod build;
pub mod fetch;
pub mod plan;
pub mod push;
pub mod report;
pub mod scan;
pub mod sign;
pub mod test;
pub mod test_containerd;
pub mod test_report;
pub mod verify;
