//! How libraries tell the user what they are doing, without printing. The binary implements
//! [`Reporter`] with indicatif bars on a terminal and plain lines otherwise (`src/ui.rs`).

/// A unit of long work with a known (or unknown) size.
pub trait Progress: Send + Sync {
    fn set_length(&self, total: u64);
    fn advance(&self, bytes: u64);
    /// Resets the position (a retry starting over).
    fn set_position(&self, position: u64);
    fn finish(&self);
}

pub trait Reporter: Send + Sync {
    /// A status line: `verb` is a capitalised participle (`Downloading`, `Verifying`, ...).
    fn status(&self, verb: &str, message: &str);
    /// A warning that does not stop the work (a retry, a fallback).
    fn warn(&self, message: &str);
    /// Starts a progress bar for `what`.
    fn progress(&self, verb: &str, what: &str, total: Option<u64>) -> Box<dyn Progress>;
}

/// Reports nothing; for tests and library callers that do not care.
pub struct Silent;

/// A progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_length(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn finish(&self) {}
}

impl Reporter for Silent {
    fn status(&self, _: &str, _: &str) {}
    fn warn(&self, _: &str) {}
    fn progress(&self, _: &str, _: &str, _: Option<u64>) -> Box<dyn Progress> {
        Box::new(NoProgress)
    }
}
