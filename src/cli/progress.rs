//! Progress for long work where a person waits (`hil run`, `hil sweep`): a bar on stderr when
//! stderr is a terminal (indicatif), plain lines on stderr otherwise, so a CI log shows where a
//! run is without escape codes. Never on stdout, which carries the report.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress over `total` steps of one command.
pub struct Progress {
    /// The command, prefixed to plain lines (`hil run`).
    command: &'static str,
    total: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines otherwise.
    pub fn new(command: &'static str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} {elapsed:>4} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            command,
            total,
            bar,
        }
    }

    /// Step `done` (0-based count of finished steps) starts, doing `what`.
    pub fn start(&self, done: u64, what: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(what.to_string());
            }
            None => eprintln!("{}: [{}/{}] {what}", self.command, done + 1, self.total),
        }
    }

    /// A note inside the current step (the bar's message; no plain line, to keep logs short).
    pub fn note(&self, what: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what.to_string());
        }
    }

    /// Prints a line above the bar (or plainly) without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
