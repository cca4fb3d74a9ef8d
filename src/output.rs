//! Writing results to stdout. A closed pipe (`onepd … | head`) ends the
//! process quietly with status 0 instead of a panic.

use std::io::Write;

/// Prints one line to stdout.
pub fn line(text: impl AsRef<str>) {
    let mut stdout = std::io::stdout().lock();
    let result =
        stdout.write_all(text.as_ref().as_bytes()).and_then(|_| stdout.write_all(b"\n")).and_then(|_| stdout.flush());
    if let Err(err) = result {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {err}");
        std::process::exit(2);
    }
}

/// Prints a value as one line of JSON.
pub fn json(value: &serde_json::Value) {
    line(value.to_string());
}

/// A progress bar on stderr, hidden when stderr is not a terminal or when
/// the output is JSON.
pub fn progress(total: u64, json: bool, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if json || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// A `(done, total)` progress callback that drives `bar`.
pub fn reporter(bar: &indicatif::ProgressBar) -> impl Fn(u64, u64) + Send + Sync + 'static {
    let bar = bar.clone();
    move |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    }
}
