//! The rules parser and the sanitizer: any rules text parses or yields
//! problems; rules that parse compile; a record through them is published,
//! excluded, halted or quarantined with a bounded reason, never a panic;
//! what is published is still a valid record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncdata_core::record::Record;
use syncdata_producer::sanitize::transform::{CompiledRules, Verdict};
use syncdata_producer::sanitize::{rules, SecretKey};

fuzz_target!(|data: &[u8]| {
    // Rules text, a NUL, then record lines.
    let (rules_part, records) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(rules_part) else {
        return;
    };
    let (parsed, _problems) = rules::parse(text);
    let Some(parsed) = parsed else {
        return;
    };
    let key = SecretKey::new(b"fuzz-key-fuzz-key-fuzz-key-fuzz-key", "fuzz").expect("key");
    let compiled = CompiledRules::new(&parsed, Some(&key)).expect("rules that parse compile");
    for line in records.split(|&b| b == b'\n') {
        let Ok(mut record) = Record::parse(line) else {
            continue;
        };
        match compiled.apply(&mut record) {
            Ok(Verdict::Publish) => {
                let again = Record::parse(&record.to_json());
                assert!(again.is_ok(), "a sanitized record is invalid: {again:?}");
            }
            Ok(Verdict::Exclude) => {}
            Err(halt) => assert!(halt.reason.len() <= 4096, "{} bytes", halt.reason.len()),
        }
    }
});
