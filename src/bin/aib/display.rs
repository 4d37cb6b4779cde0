//! How a run shows on stderr: on a terminal, a status line and one progress bar per transfer
//! (conversions, downloads, uploads, page blobs, VHD copies, replication); otherwise plain
//! lines, a transfer's at most every few seconds and once at its end.

use aib::{Event, OutputStream};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often a transfer's plain line is repeated when stderr is no terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One transfer as last reported.
struct Transfer {
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<Instant>,
    done: u64,
    total: Option<u64>,
    unit: String,
}

/// Shows a run.
pub(crate) struct Display {
    multi: Option<indicatif::MultiProgress>,
    status: Option<indicatif::ProgressBar>,
    quiet: bool,
    start: Instant,
    phase: String,
    step: String,
    transfers: HashMap<String, Transfer>,
}

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// `512 MiB / 2.0 GiB (25%)`, `3 / 10 replication %`.
pub(crate) fn amount(done: u64, total: Option<u64>, unit: &str) -> String {
    let bytes = |n: u64| indicatif::BinaryBytes(n).to_string();
    match (unit, total) {
        ("bytes", Some(t)) if t > 0 => format!("{} / {} ({}%)", bytes(done), bytes(t), done.min(t) * 100 / t),
        ("bytes", _) => bytes(done),
        (u, Some(t)) => format!("{done} / {t} {u}"),
        (u, None) => format!("{done} {u}"),
    }
}

impl Display {
    /// A display; `quiet` shows nothing.
    pub(crate) fn new(quiet: bool) -> Self {
        Self::with_status(quiet, true)
    }

    /// A display with the run's status line (phase, step, elapsed) when `status`, or only
    /// transfer bars (a transfer outside a run has no phase).
    fn with_status(quiet: bool, status: bool) -> Self {
        let tty = !quiet && std::io::stderr().is_terminal();
        let multi = tty.then(indicatif::MultiProgress::new);
        let status = multi.as_ref().filter(|_| status).map(|m| {
            let b = m.add(indicatif::ProgressBar::new_spinner());
            b.set_style(style("{spinner} {elapsed_precise} {msg}"));
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Display { multi, status, quiet, start: Instant::now(), phase: "Queued".into(), step: String::new(), transfers: HashMap::new() }
    }

    fn print(&self, s: String) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(s);
            }
            None => eprintln!("[{:>6.1}s] {s}", self.start.elapsed().as_secs_f64()),
        }
    }

    fn progress(&mut self, step: &str, done: u64, total: Option<u64>, unit: &str) {
        if self.quiet {
            return;
        }
        let multi = self.multi.clone();
        let t = self.transfers.entry(step.to_string()).or_insert_with(|| Transfer {
            bar: multi.map(|m| {
                let b = m.add(indicatif::ProgressBar::new(0));
                b.set_prefix(step.to_string());
                b
            }),
            last_line: None,
            done: 0,
            total: None,
            unit: String::new(),
        });
        if t.unit != unit || t.total != total {
            if let Some(b) = &t.bar {
                b.set_style(match (unit, total) {
                    ("bytes", Some(_)) => {
                        style("  {prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
                    }
                    ("bytes", None) => style("  {prefix} {binary_bytes} {binary_bytes_per_sec}"),
                    (_, Some(_)) => style("  {prefix} [{bar:30}] {pos}/{len} {msg}"),
                    (_, None) => style("  {prefix} {pos} {msg}"),
                });
                b.set_length(total.unwrap_or(0));
                b.set_message(unit.to_string());
            }
            t.unit = unit.to_string();
            t.total = total;
        }
        t.done = done;
        match &t.bar {
            Some(b) => b.set_position(done),
            None => {
                let finished = total.is_some_and(|n| done >= n);
                if t.last_line.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) || finished {
                    t.last_line = Some(Instant::now());
                    let line = format!("  [{step}] {}", amount(done, total, unit));
                    eprintln!("[{:>6.1}s] {line}", self.start.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// The transfer of `step` is over: its bar goes, its last figure stays as a line.
    fn finish(&mut self, step: &str) {
        if let Some(Transfer { bar: Some(b), done, total, unit, .. }) = self.transfers.remove(step) {
            b.finish_and_clear();
            if let Some(m) = &self.multi {
                m.remove(&b);
            }
            self.print(format!("  [{step}] {}", amount(done, total, &unit)));
        }
    }

    fn refresh(&self) {
        if let Some(b) = &self.status {
            b.set_message(format!("{} | {}", self.phase, self.step));
        }
    }

    /// Shows one event.
    pub(crate) fn event(&mut self, e: &Event) {
        match e {
            Event::State { state, sub_state, .. } => {
                self.phase = sub_state.map(|s| format!("{state}/{s}")).unwrap_or_else(|| state.to_string());
                self.print(format!("state: {}", self.phase));
            }
            Event::StepStarted { step } => {
                self.step = step.clone();
                self.print(format!("▶ {step}"));
            }
            Event::StepFinished { step, duration, error } => {
                self.finish(step);
                match error {
                    None => self.print(format!("✔ {step} ({:.1}s)", duration.as_secs_f64())),
                    Some(e) => self.print(format!("✘ {step} ({:.1}s): {e}", duration.as_secs_f64())),
                }
            }
            Event::Output { step, stream, line } if step != "console" => {
                let mark = if *stream == OutputStream::Stderr { "!" } else { " " };
                self.print(format!("  {mark}[{step}] {line}"));
            }
            Event::Progress { step, done, total, unit } => self.progress(step, *done, *total, unit),
            Event::Notice { message } => self.print(format!("• {message}")),
            _ => {}
        }
        self.refresh();
    }

    /// Clears the terminal's bars.
    pub(crate) fn finish_all(&mut self) {
        let steps: Vec<String> = self.transfers.keys().cloned().collect();
        for s in steps {
            self.finish(&s);
        }
        if let Some(b) = &self.status {
            b.finish_and_clear();
        }
    }
}

/// A progress callback for one transfer outside a run (`aib images import`): a bar on a
/// terminal, a line every few seconds otherwise.
pub(crate) fn transfer(what: &str, quiet: bool) -> impl Fn(u64, Option<u64>) + Send + Sync + use<> {
    let d = std::sync::Mutex::new(Display::with_status(quiet, false));
    let what = what.to_string();
    move |done, total| {
        if let Ok(mut d) = d.lock() {
            d.progress(&what, done, total, "bytes");
            if total.is_some_and(|t| done >= t) {
                d.finish_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::amount;

    #[test]
    fn amounts_read_as_people_expect() {
        assert_eq!(amount(512 << 20, Some(2 << 30), "bytes"), "512.00 MiB / 2.00 GiB (25%)");
        assert_eq!(amount(3, Some(10), "replication %"), "3 / 10 replication %");
        assert_eq!(amount(1 << 10, None, "bytes"), "1.00 KiB");
    }
}
