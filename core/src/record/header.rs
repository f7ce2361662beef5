//! A line checked without building its record's images, for a producer
//! that publishes the line as it is (no sanitization).
//!
//! [`Record::parse_forwardable`] builds every image: a map of column names
//! to boxed raw values, some fifteen allocations per pgbench record, freed
//! at once when the line is published as it is. Here the same line is
//! read with every name and value borrowed from it, checked by the very
//! function [`Record::validate`] calls ([`validate_parts`]), and only its
//! header (table, operation, version) is owned.
//!
//! The one promise: when [`Record::parse_forwardable_header`] accepts a
//! line, [`Record::parse_forwardable`] accepts it too, with the same header
//! and `forward = true`. It may refuse more (a name or text with an escape,
//! which cannot be borrowed; a SCHEMA record; anything not forwardable);
//! the caller then takes the whole parse, which decides and words the
//! error. A test holds the two parses to that promise over generated
//! lines.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{only_record_fields, validate_parts, Bounded, Op, Record};
use crate::version::Lsn;

type Image<'a> = BTreeMap<&'a str, &'a RawValue>;

/// A record's fields as [`Record`] reads them (the same names, defaults
/// and types), strings borrowed, and no other field (what
/// `only_record_fields` asks of a line published as it is).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Borrowed<'a> {
    #[serde(default = "public", borrow)]
    schema: &'a str,
    #[serde(borrow)]
    table: &'a str,
    op: Op,
    #[serde(default, borrow, deserialize_with = "image")]
    data: Option<Image<'a>>,
    #[serde(default, borrow, deserialize_with = "image")]
    old_keys: Option<Image<'a>>,
    #[serde(deserialize_with = "lsn")]
    lsn: Lsn,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    ts: Option<&'a str>,
    #[serde(default)]
    snapshot: bool,
}

fn public() -> &'static str {
    "public"
}

fn lsn<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
    let text = <&'de str>::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// An image as `bounded_columns` reads it (the same visitor), names and
/// values borrowed.
fn image<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Image<'de>>, D::Error> {
    d.deserialize_option(Bounded::<&'de str, &'de RawValue>(std::marker::PhantomData))
}

impl Record {
    /// The header of a line that may be published as it is: its record
    /// with no images (`data` and `old_keys` None, everything else as
    /// [`Record::parse_forwardable`] reads it), when that parse would
    /// accept the line with `forward = true` and it is not a SCHEMA record.
    /// None: take [`Record::parse_forwardable`] (see the module doc).
    pub fn parse_forwardable_header(line: &[u8]) -> Option<Record> {
        // Valid UTF-8 checked once for the line, not string by string.
        let text = std::str::from_utf8(line).ok()?;
        // Without a backslash no key is escaped, and the parse's refusal of
        // unknown fields is `only_record_fields`; with one, that scan
        // decides.
        if memchr::memchr(b'\\', line).is_some() && !only_record_fields(line) {
            return None;
        }
        let b: Borrowed<'_> = serde_json::from_str(text).ok()?;
        let seq = b.seq?;
        if b.op == Op::Schema {
            return None;
        }
        validate_parts(
            b.schema,
            b.table,
            b.op,
            b.seq,
            b.snapshot,
            b.data.as_ref(),
            b.old_keys.as_ref(),
        )
        .ok()?;
        Some(Record {
            schema: b.schema.to_owned(),
            table: b.table.to_owned(),
            op: b.op,
            data: None,
            old_keys: None,
            lsn: b.lsn,
            seq: Some(seq),
            ts: b.ts.map(str::to_owned),
            snapshot: b.snapshot,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Record, MAX_COLUMNS};

    /// The whole parse's record, its images taken off.
    fn header_of(line: &[u8]) -> Option<Record> {
        let (mut r, forward) = Record::parse_forwardable(line).ok()?;
        if !forward {
            return None;
        }
        r.data = None;
        r.old_keys = None;
        Some(r)
    }

    fn check(line: &str) {
        if let Some(h) = Record::parse_forwardable_header(line.as_bytes()) {
            assert_eq!(
                Some(h),
                header_of(line.as_bytes()),
                "the header parse accepted what the whole parse reads otherwise: {line}"
            );
        }
    }

    #[test]
    fn a_plain_line_is_read_by_both_alike() {
        let line = r#"{"schema":"public","table":"pgbench_accounts","op":"UPDATE","data":{"aid":7,"bid":1,"abalance":-20,"filler":"  "},"lsn":"0/16B3748","seq":3,"ts":"2026-12-05 02:10:11+00"}"#;
        let h = Record::parse_forwardable_header(line.as_bytes()).expect("accepted");
        assert_eq!(Some(h.clone()), header_of(line.as_bytes()));
        assert_eq!(h.table, "pgbench_accounts");
        assert_eq!(h.seq, Some(3));
        assert!(h.data.is_none());
    }

    #[test]
    fn what_it_leaves_to_the_whole_parse() {
        for line in [
            // Not forwardable: no seq, an unknown field, an escaped key.
            r#"{"table":"t","op":"INSERT","data":{"id":1},"lsn":"0/1"}"#,
            r#"{"table":"t","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":1,"x":2}"#,
            r#"{"t\u0061ble":"t","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":1}"#,
            // A name or text with an escape cannot be borrowed.
            r#"{"table":"t","op":"INSERT","data":{"i\u0064":1},"lsn":"0/1","seq":1}"#,
            r#"{"table":"t\u0031","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":1}"#,
            // SCHEMA records are rewritten by the producer.
            r#"{"table":"t","op":"SCHEMA","data":{"definition":{}},"lsn":"0/1","seq":1}"#,
            // Invalid: the whole parse words the error.
            r#"{"table":"t","op":"INSERT","lsn":"0/1","seq":1}"#,
            r#"{"table":"t","op":"INSERT","data":{"id":"\ud800"},"lsn":"0/1","seq":1}"#,
            r#"{"table":"t","op":"UPDATE","data":{"id":1},"lsn":"0/1","seq":1,"snapshot":true}"#,
            r#"{"table":"t","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":18446744073709551615}"#,
            r#"{"table":"","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":1}"#,
            r#"{"schema":null,"table":"t","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":1}"#,
            r#"{"table":"t","op":"INSERT","data":{"id":1},"lsn":"0/1","seq":1,"seq":2}"#,
        ] {
            assert!(
                Record::parse_forwardable_header(line.as_bytes()).is_none(),
                "accepted: {line}"
            );
            check(line);
        }
    }

    #[test]
    fn a_name_given_twice_keeps_the_last_value_in_both() {
        // The earlier value would fail the surrogate check; the whole
        // parse keeps only the last, and so does the header parse.
        let line =
            r#"{"table":"t","op":"INSERT","data":{"id":"\ud800","id":1},"lsn":"0/1","seq":1}"#;
        assert!(Record::parse_forwardable_header(line.as_bytes()).is_some());
        check(line);
    }

    #[test]
    fn the_column_limit_is_the_same() {
        let cols = |n: usize| {
            (0..n)
                .map(|i| format!(r#""c{i}":1"#))
                .collect::<Vec<_>>()
                .join(",")
        };
        for n in [MAX_COLUMNS, MAX_COLUMNS + 1] {
            let line = format!(
                r#"{{"table":"t","op":"INSERT","data":{{{}}},"lsn":"0/1","seq":1}}"#,
                cols(n)
            );
            assert_eq!(
                Record::parse_forwardable_header(line.as_bytes()).is_some(),
                n <= MAX_COLUMNS
            );
            check(&line);
        }
    }

    /// One field: one of `good` (`None`: left out) nine times in ten, else
    /// one of `odd`.
    fn field(
        name: &'static str,
        good: &[Option<&'static str>],
        odd: &[Option<&'static str>],
    ) -> impl Strategy<Value = Option<String>> {
        let render = move |v: &Option<&'static str>| v.map(|v| format!(r#""{name}":{v}"#));
        let good: Vec<Option<String>> = good.iter().map(render).collect();
        let odd: Vec<Option<String>> = odd.iter().map(render).collect();
        prop_oneof![
            9 => proptest::sample::select(good),
            1 => proptest::sample::select(odd),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        (
            field(
                "schema",
                &[Some(r#""public""#), Some(r#""s""#), None],
                &[Some(r#""s\u0031""#), Some("null"), Some(r#""""#)],
            ),
            field(
                "table",
                &[Some(r#""t""#)],
                &[Some("7"), Some(r#""t\u0000""#), None],
            ),
            field(
                "op",
                &[
                    Some(r#""INSERT""#),
                    Some(r#""UPDATE""#),
                    Some(r#""DELETE""#),
                    Some(r#""TRUNCATE""#),
                ],
                &[Some(r#""SCHEMA""#), Some(r#""insert""#), None],
            ),
            (
                image(),
                image(),
                proptest::bool::weighted(0.8),
                proptest::bool::weighted(0.3),
            ),
            field(
                "lsn",
                &[Some(r#""0/16B3748""#)],
                &[Some(r#""bad""#), Some(r#""0\/1""#), Some("1"), None],
            ),
            field(
                "seq",
                &[Some("1"), Some("0")],
                &[
                    Some("-1"),
                    Some("9223372036854775808"),
                    Some("null"),
                    Some("1.5"),
                    None,
                ],
            ),
            field(
                "ts",
                &[Some(r#""2026-01-01""#), Some("null"), None],
                &[Some("1"), Some(r#""a\"b""#)],
            ),
            field(
                "snapshot",
                &[Some("false"), None],
                &[Some("true"), Some(r#""yes""#)],
            ),
            proptest::sample::select(vec![
                None,
                None,
                None,
                Some(r#""other":1"#),
                Some(r#""seq":2"#),
            ]),
        )
            .prop_map(
                |(
                    schema,
                    table,
                    op,
                    (data, old, with_data, with_old),
                    lsn,
                    seq,
                    ts,
                    snapshot,
                    extra,
                )| {
                    let mut parts: Vec<String> =
                        [schema, table, op].into_iter().flatten().collect();
                    if with_data {
                        parts.push(format!(r#""data":{data}"#));
                    }
                    if with_old {
                        parts.push(format!(r#""old_keys":{old}"#));
                    }
                    parts.extend([lsn, seq, ts, snapshot].into_iter().flatten());
                    parts.extend(extra.map(str::to_owned));
                    format!("{{{}}}", parts.join(","))
                },
            )
    }

    fn image() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            12 => proptest::sample::select(vec!["id".to_owned(), "a".to_owned(), "b".to_owned()]),
            1 => proptest::sample::select(vec![
                String::new(),
                "x".repeat(64),
                "n\\u0000ul".to_owned(),
                "\\u0069d".to_owned(),
            ]),
        ];
        let value = prop_oneof![
            12 => proptest::sample::select(vec![
                "1".to_owned(),
                "null".to_owned(),
                r#""text""#.to_owned(),
                r#""t\"a\\b""#.to_owned(),
                r#""\ud83d\ude00""#.to_owned(),
                "[1,{\"k\":[2]}]".to_owned(),
                "{}".to_owned(),
            ]),
            1 => proptest::sample::select(vec![
                r#""\ud800""#.to_owned(),
                format!("{}1{}", "[".repeat(129), "]".repeat(129)),
            ]),
        ];
        let image = proptest::collection::vec((name, value), 0..4).prop_map(|cols| {
            let inner: Vec<String> = cols
                .into_iter()
                .map(|(n, v)| format!(r#""{n}":{v}"#))
                .collect();
            format!("{{{}}}", inner.join(","))
        });
        prop_oneof![
            4 => image,
            1 => Just("null".to_owned()),
            1 => Just("[]".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn accepted_only_where_the_whole_parse_reads_the_same(line in line()) {
            check(&line);
        }
    }
}
