//! Transform-only throughput of the producer with and without sanitization
//! rules: the same 200,000 demo records (customers, orders, order_lines,
//! with large TOAST-able texts, jsonb and key-changing UPDATEs) go through
//! what the producer does per line before publishing — parse, (sanitize,)
//! serialize — with no NATS and no disk in the measurement.
//!
//! `cargo bench -p syncdata-producer --bench sanitize`

use std::hint::black_box;
use std::time::{Duration, Instant};

use syncdata_core::record::Record;
use syncdata_producer::sanitize::{rules, CompiledRules, SecretKey, Verdict};
use syncdata_testkit::workload::{self, WorkloadSpec};

const RECORDS: usize = 200_000;
const ROUNDS: usize = 3;

/// A realistic rule set for the demo schema: pseudonymized keys that still
/// join, fake names and emails, a masked free-text column, dates shifted per
/// customer, a hashed field inside jsonb.
const RULES: &str = include_str!("demo-rules.toml");

fn pass(lines: &[Vec<u8>], rules: Option<&CompiledRules>) -> (Duration, usize) {
    let started = Instant::now();
    let mut bytes = 0;
    for line in lines {
        let mut record = Record::parse(line).expect("generated records parse");
        if let Some(rules) = rules {
            let verdict = rules
                .apply(&mut record)
                .expect("the rules cover the demo schema");
            assert_eq!(verdict, Verdict::Publish);
        }
        bytes += black_box(record.to_json()).len();
    }
    (started.elapsed(), bytes)
}

/// What the producer does now without rules: parse and validate, then
/// publish the line itself when it may stand for the record.
fn pass_forward(lines: &[Vec<u8>]) -> (Duration, usize) {
    let started = Instant::now();
    let mut bytes = 0;
    for line in lines {
        let (record, forward) = Record::parse_forwardable(line).expect("generated records parse");
        let payload = if forward {
            line.clone()
        } else {
            record.to_json()
        };
        bytes += black_box(payload).len();
    }
    (started.elapsed(), bytes)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let records = workload::generate(&WorkloadSpec::full(42, RECORDS));
    let lines: Vec<Vec<u8>> = records.iter().map(Record::to_json).collect();
    let input_mb = lines.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    let (parsed, problems) = rules::parse(RULES);
    let parsed = parsed.unwrap_or_else(|| panic!("{problems:?}"));
    let key = SecretKey::new(b"benchmark-key-benchmark-key-benchmark-key", "bench").unwrap();
    let compiled = CompiledRules::new(&parsed, Some(&key)).unwrap();

    // Warm-up (allocator, caches).
    pass(&lines[..lines.len() / 10], None);
    pass(&lines[..lines.len() / 10], Some(&compiled));

    let mut forwarded = Vec::new();
    let mut plain = Vec::new();
    let mut sanitized = Vec::new();
    let mut out_bytes = (0, 0);
    for _ in 0..ROUNDS {
        forwarded.push(pass_forward(&lines).0);
        let (t, b) = pass(&lines, None);
        plain.push(t);
        out_bytes.0 = b;
        let (t, b) = pass(&lines, Some(&compiled));
        sanitized.push(t);
        out_bytes.1 = b;
    }
    let (p, s) = (median(plain), median(sanitized));
    let fw = median(forwarded);
    let rate = |d: Duration| lines.len() as f64 / d.as_secs_f64();
    println!(
        "sanitize benchmark: {} records ({input_mb:.1} MB of JSON lines), median of {ROUNDS} rounds",
        lines.len()
    );
    println!(
        "  without rules: {:>10.0} records/s  ({:.3} s, {:.1} MB out)",
        rate(p),
        p.as_secs_f64(),
        out_bytes.0 as f64 / 1e6
    );
    println!(
        "  without rules, line forwarded (no re-serialization): {:>10.0} records/s  ({:.3} s)",
        rate(fw),
        fw.as_secs_f64()
    );
    println!(
        "  with rules:    {:>10.0} records/s  ({:.3} s, {:.1} MB out)",
        rate(s),
        s.as_secs_f64(),
        out_bytes.1 as f64 / 1e6
    );
    println!(
        "  ratio (with / without): {:.2}  ({:.2}x the time per record)",
        rate(s) / rate(p),
        s.as_secs_f64() / p.as_secs_f64()
    );
}
