//! The binary's side of reporting: indicatif bars when stderr is a terminal, plain status lines
//! otherwise. Libraries never print; they call the `Reporter` this implements.

use std::io::IsTerminal;
use std::sync::Mutex;

use etcdimg::report::{Progress, Reporter};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Ui {
    bars: Option<MultiProgress>,
    lock: Mutex<()>,
}

impl Ui {
    pub fn new() -> Ui {
        let tty =
            std::io::stderr().is_terminal() && std::env::var_os("ETCDIMG_NO_PROGRESS").is_none();
        Ui {
            bars: tty.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            lock: Mutex::new(()),
        }
    }

    fn line(&self, text: &str) {
        let _guard = self.lock.lock();
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn set_length(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn set_position(&self, position: u64) {
        self.0.set_position(position);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Plain mode: one line when a long piece of work starts, one when it ends.
struct Plain {
    verb: String,
    what: String,
    total: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl Progress for Plain {
    fn set_length(&self, total: u64) {
        self.total
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }
    fn advance(&self, bytes: u64) {
        self.done
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    fn set_position(&self, position: u64) {
        self.done
            .store(position, std::sync::atomic::Ordering::Relaxed);
    }
    fn finish(&self) {
        let done = self.done.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "{:>12} {} {} ({done} bytes)",
            "Finished",
            self.verb.to_lowercase(),
            self.what
        );
    }
}

impl Reporter for Ui {
    fn status(&self, verb: &str, message: &str) {
        self.line(&format!("{verb:>12} {message}"));
    }

    fn warn(&self, message: &str) {
        self.line(&format!("warning: {message}"));
    }

    fn progress(&self, verb: &str, what: &str, total: Option<u64>) -> Box<dyn Progress> {
        match &self.bars {
            Some(m) => {
                let bar = m.add(ProgressBar::new(total.unwrap_or(0)));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>12.cyan.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(verb.to_string());
                bar.set_message(what.to_string());
                Box::new(Bar(bar))
            }
            None => {
                self.line(&format!("{verb:>12} {what}"));
                Box::new(Plain {
                    verb: verb.into(),
                    what: what.into(),
                    total: total.unwrap_or(0).into(),
                    done: 0.into(),
                })
            }
        }
    }
}
