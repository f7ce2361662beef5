//! Progress of a long command (`snapshot`, `resync`): a bar with %, rate and
//! ETA on stderr when stderr is a terminal (redrawn in place, never wider
//! than the terminal: the text part is cut to fit), else one plain line
//! every few seconds (for logs). Progress never fails the command: a closed
//! stderr drops it.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plain lines (stderr not a terminal) at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    label: String,
    unit: &'static str,
    total: Option<u64>,
    pos: u64,
    started: Instant,
    last_plain: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `label` names the work ("snapshot users"), `unit` what is counted
    /// ("rows"), `total` how many when known.
    pub fn new(label: impl Into<String>, unit: &'static str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total.unwrap_or(0)),
                ProgressDrawTarget::stderr_with_hz(4),
            );
            let template = if total.is_some() {
                "{prefix} {percent:>3}% [{bar:16}] {wide_msg}"
            } else {
                "{prefix} {spinner} {wide_msg}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        let p = Progress {
            label: label.into(),
            unit,
            total,
            pos: 0,
            started: Instant::now(),
            last_plain: None,
            bar,
        };
        if let Some(bar) = &p.bar {
            bar.set_prefix(shorten(&p.label, 28));
        }
        p
    }

    /// Sets (or corrects) the total.
    pub fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// The total, when known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Done so far; redraws the bar, or prints a plain line when due.
    pub fn set(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(self.figures());
            return;
        }
        if self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
            self.last_plain = Some(Instant::now());
            crate::errln!("{}", self.line());
        }
    }

    /// Removes the bar (a terminal keeps no half-drawn line); returns the
    /// final line for the caller to print.
    pub fn finish(&mut self) -> String {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.line()
    }

    /// Items per second since the start.
    pub fn rate(&self) -> f64 {
        self.pos as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    /// `snapshot users: 11,000 of 50,101 rows (22%), 1,234 rows/s, ETA 32s`.
    pub fn line(&self) -> String {
        format!("{}: {}", self.label, self.figures())
    }

    fn figures(&self) -> String {
        figures(self.pos, self.total, self.unit, self.rate())
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `11,000 of 50,101 rows (22%), 1,234 rows/s, ETA 32s`; without a total,
/// `11,000 rows, 1,234 rows/s`.
pub fn figures(pos: u64, total: Option<u64>, unit: &str, rate: f64) -> String {
    match total {
        Some(total) if total > 0 => {
            let pct = (pos as f64 * 100.0 / total as f64).min(100.0);
            let eta = if pos >= total {
                "done".to_owned()
            } else if rate > 0.0 {
                format!("ETA {}", duration((total - pos) as f64 / rate))
            } else {
                "ETA ?".to_owned()
            };
            format!(
                "{} of {} {unit} ({pct:.0}%), {} {unit}/s, {eta}",
                count(pos),
                count(total),
                count(rate.round() as u64)
            )
        }
        _ => format!(
            "{} {unit}, {} {unit}/s",
            count(pos),
            count(rate.round() as u64)
        ),
    }
}

/// `12,345`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `42s`, `3m05s`, `2h10m`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// At most `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_show_percent_rate_and_eta() {
        assert_eq!(
            figures(11_000, Some(50_101), "rows", 1234.4),
            "11,000 of 50,101 rows (22%), 1,234 rows/s, ETA 32s"
        );
        assert_eq!(
            figures(50_101, Some(50_101), "rows", 900.0),
            "50,101 of 50,101 rows (100%), 900 rows/s, done"
        );
        assert_eq!(
            figures(0, Some(10), "records", 0.0),
            "0 of 10 records (0%), 0 records/s, ETA ?"
        );
        assert_eq!(figures(5, None, "rows", 2.0), "5 rows, 2 rows/s");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(999), "999");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(
            shorten("snapshot a_very_long_table_name", 12),
            "snapshot a_…"
        );
    }

    #[test]
    fn a_bar_only_on_a_terminal() {
        let mut p = Progress::new("resync t", "records", Some(10));
        p.set(5);
        assert_eq!(p.bar.is_some(), std::io::stderr().is_terminal());
        assert!(p.finish().starts_with("resync t: 5 of 10 records (50%)"));
    }
}
