//! The results table (markdown), the machine it ran on, and the settings.

use std::fmt::Write as _;
use std::time::Duration;

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub what: String,
    pub result: String,
    pub target: String,
    /// "met", "missed", or empty for an informational line.
    pub verdict: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub settings: Vec<String>,
}

impl Report {
    pub fn row(&mut self, id: &str, what: impl Into<String>, result: impl Into<String>) {
        self.rows.push(Row {
            id: id.to_owned(),
            what: what.into(),
            result: result.into(),
            target: String::new(),
            verdict: String::new(),
        });
    }

    pub fn target(
        &mut self,
        id: &str,
        what: impl Into<String>,
        result: impl Into<String>,
        target: impl Into<String>,
        verdict: impl Into<String>,
    ) {
        self.rows.push(Row {
            id: id.to_owned(),
            what: what.into(),
            result: result.into(),
            target: target.into(),
            verdict: verdict.into(),
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn setting(&mut self, s: impl Into<String>) {
        self.settings.push(s.into());
    }

    pub fn markdown(&self, machine: &[(String, String)], title: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### {title}\n");
        let _ = writeln!(s, "| | measurement | result | target | verdict |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                cell(&r.id),
                cell(&r.what),
                cell(&r.result),
                cell(if r.target.is_empty() {
                    "—"
                } else {
                    &r.target
                }),
                cell(if r.verdict.is_empty() {
                    "—"
                } else {
                    &r.verdict
                }),
            );
        }
        if !machine.is_empty() {
            let _ = writeln!(s, "\nMachine:\n");
            for (k, v) in machine {
                let _ = writeln!(s, "- {k}: {v}");
            }
        }
        if !self.settings.is_empty() {
            let _ = writeln!(s, "\nSettings:\n");
            for x in &self.settings {
                let _ = writeln!(s, "- {x}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

/// A table cell: a `|` would end it, even inside backquotes.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
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

/// A rate per second, rounded to 3 significant digits: `48,300/s`.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

pub fn fmt_rate(r: f64) -> String {
    let mag = if r >= 1.0 {
        10f64.powi(r.log10().floor() as i32 - 2).max(1.0)
    } else {
        1.0
    };
    thousands(((r / mag).round() * mag) as u64)
}

pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// `90,400 row changes/s (400,000 in 4.42 s)`.
pub fn changes_line(rate: f64, changes: u64, elapsed: Duration) -> String {
    format!(
        "{} row changes/s ({} in {})",
        fmt_rate(rate),
        thousands(changes),
        secs(elapsed)
    )
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// "met (2.10×)" or "missed (0.80×)" for a ratio with goal ≥ `min`.
pub fn verdict_ratio(ratio: f64, min: f64) -> String {
    if ratio >= min {
        format!("met ({ratio:.2}×)")
    } else {
        format!("missed ({ratio:.2}×)")
    }
}

pub fn verdict(ok: bool) -> String {
    if ok { "met" } else { "missed" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_stay_inside_their_cell() {
        assert_eq!(cell("`pg_dump | psql`"), "`pg_dump \\| psql`");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(fmt_rate(48_321.7), "48,300");
        assert_eq!(fmt_rate(123.4), "123");
        assert_eq!(fmt_rate(5.2), "5");
    }
}
