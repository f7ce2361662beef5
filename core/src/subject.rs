//! NATS names derived from table names: subjects, durable consumer names and
//! message ids. Table names come from input files and are hostile: every
//! derived name is escaped so that no table name can address another
//! table's subject, widen a filter (`*`, `>`) or break a header line.

use sha2::{Digest, Sha256};

use crate::version::Version;

/// Escapes one subject token: `[A-Za-z0-9_-]` stay, every other byte becomes
/// `%XX`. Injective, never empty for a non-empty name, and free of `.`, `*`,
/// `>` and whitespace.
pub fn encode_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`encode_token`]; None when the token is not one it made.
pub fn decode_token(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `<prefix>.<schema>.<table>`, e.g. `syncdata.changes.public.users`.
pub fn table_subject(prefix: &str, schema: &str, table: &str) -> String {
    format!("{prefix}.{}.{}", encode_token(schema), encode_token(table))
}

/// A destination's dead letters of one table:
/// `<dlq_prefix>.<instance>.<schema>.<table>`. Each local database (its
/// instance id) has its own subjects, so one database's dead letters are
/// never deduplicated against, listed, replayed or purged with another's.
pub fn dlq_subject(prefix: &str, instance: &str, schema: &str, table: &str) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        encode_token(instance),
        encode_token(schema),
        encode_token(table)
    )
}

/// Every dead letter of one destination: `<dlq_prefix>.<instance>.>`.
pub fn dlq_instance_filter(prefix: &str, instance: &str) -> String {
    format!("{prefix}.{}.>", encode_token(instance))
}

/// Dead letters in the layout before per-destination subjects
/// (`<dlq_prefix>.<schema>.<table>`, shared by every database).
pub fn dlq_legacy_filter(prefix: &str) -> String {
    format!("{prefix}.*.*")
}

/// The `Nats-Msg-Id` of a dead letter: the destination and the original
/// message (its subject and stream sequence), so a crash between filing and
/// acking cannot file it twice, and two databases never collide.
pub fn dlq_message_id(instance: &str, original_subject: &str, sequence: u64) -> String {
    format!("dlq:{instance}:{original_subject}:{sequence}")
}

pub(crate) fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A durable consumer name for a table as applied into one destination
/// database (`instance`, the id stored in that database): readable, bounded
/// in length, safe as a directory name in the server's file store, and
/// unique per (stream, instance, schema, table) through a hash of the exact
/// names. Processes applying into the same database share it; another
/// database gets its own.
pub fn durable_name(stream: &str, instance: &str, schema: &str, table: &str) -> String {
    let readable: String = format!("{schema}_{table}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let instance: String = instance
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect();
    format!(
        "sd_{instance}_{readable}_{}",
        short_hash(&[stream, &instance, schema, table])
    )
}

/// The `Nats-Msg-Id` of a record: its identity (schema, table, version).
/// When the file carried no ordinal, `origin` (file name and line) stands in
/// for it so that re-reading the same file gives the same id.
pub fn message_id(schema: &str, table: &str, version: Version, origin: Option<&str>) -> String {
    let table_hash = short_hash(&[schema, table]);
    match origin {
        None => format!("{}:{}:{table_hash}", version.lsn, version.seq),
        Some(origin) => format!(
            "{}:{}:{table_hash}",
            version.lsn,
            short_hash(&[origin, &version.seq.to_string()])
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Lsn;
    use proptest::prelude::*;

    #[test]
    fn hostile_names_stay_inside_one_token() {
        for name in [
            "users\"; drop table x; --",
            "a.b",
            "has space",
            "*",
            ">",
            "new\nline",
            "%41",
        ] {
            let token = encode_token(name);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'),
                "{token}"
            );
            assert_eq!(decode_token(&token).as_deref(), Some(name));
        }
        assert_eq!(
            table_subject("syncdata.changes", "public", "a.b"),
            "syncdata.changes.public.a%2Eb"
        );
        assert_ne!(encode_token("a.b"), encode_token("a_b"));
    }

    #[test]
    fn dead_letters_are_per_destination() {
        let a = dlq_subject("syncdata.dlq", "abc123", "public", "users");
        assert_eq!(a, "syncdata.dlq.abc123.public.users");
        assert_ne!(a, dlq_subject("syncdata.dlq", "def456", "public", "users"));
        assert_eq!(
            dlq_instance_filter("syncdata.dlq", "abc123"),
            "syncdata.dlq.abc123.>"
        );
        assert_ne!(
            dlq_message_id("abc123", "syncdata.changes.public.users", 7),
            dlq_message_id("def456", "syncdata.changes.public.users", 7)
        );
        assert!(!dlq_subject("p", "a.b", "*", ">").contains(['*', '>']));
    }

    #[test]
    fn durable_names_are_bounded_and_distinct() {
        let long = "x".repeat(63);
        let d = durable_name("S", "i1", "public", &long);
        assert!(d.len() <= 3 + 12 + 1 + 40 + 1 + 16, "{d}");
        assert_ne!(
            durable_name("S", "i1", "public", "a.b"),
            durable_name("S", "i1", "public", "a_b")
        );
        assert_ne!(
            durable_name("S", "i1", "a", "b_c"),
            durable_name("S", "i1", "a_b", "c")
        );
        assert_ne!(
            durable_name("S", "i1", "public", "t"),
            durable_name("S", "i2", "public", "t"),
            "each destination database has its own durables"
        );
        assert!(!durable_name("S", "i1", "p", "a b.c*>").contains(['.', '*', '>', ' ']));
    }

    #[test]
    fn message_ids_identify_records() {
        let v = Version::new(Lsn(0x16B3D50), 2);
        let id = message_id("public", "users", v, None);
        assert!(id.starts_with("0/16B3D50:2:"), "{id}");
        assert_eq!(id, message_id("public", "users", v, None));
        assert_ne!(id, message_id("public", "orders", v, None));
        let a = message_id("public", "users", v, Some("f1.jsonl"));
        assert_ne!(a, message_id("public", "users", v, Some("f2.jsonl")));
        assert!(!message_id("public", "new\nline", v, None).contains('\n'));
    }

    proptest! {
        #[test]
        fn encoding_round_trips(name in any::<String>()) {
            prop_assert_eq!(decode_token(&encode_token(&name)), Some(name));
        }
    }
}
