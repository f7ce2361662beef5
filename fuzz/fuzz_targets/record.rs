//! The record parser: any bytes are a record or a typed error, never a
//! panic; a parsed record decodes every value strictly and survives a
//! publish round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncdata_core::record::Record;

fuzz_target!(|data: &[u8]| {
    let Ok(record) = Record::parse(data) else {
        return;
    };
    for value in record
        .data
        .iter()
        .chain(&record.old_keys)
        .flat_map(|c| c.values())
    {
        let text = value.to_pg_text();
        if value.raw().trim_start().starts_with('"') {
            // What validate accepts, a strict decoder accepts too.
            let strict: String = serde_json::from_str(value.raw()).expect("strict decode");
            assert_eq!(text.as_deref(), Some(strict.as_str()));
        }
    }
    let again = Record::parse(&record.to_json()).expect("a parsed record parses again");
    assert_eq!(again, record);
});
