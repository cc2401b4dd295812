//! One file per verb. Each is thin: settings in, one pipeline call, a result out.

pub mod build;
pub mod push;
pub mod test;
