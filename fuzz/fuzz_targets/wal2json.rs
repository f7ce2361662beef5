//! The wal2json decoder: any row is an event or a typed error; a decoded
//! change becomes a record that validates or is rejected with a typed error
//! (never a panic), and a valid one survives a publish round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncdata_core::record::Record;
use syncdata_core::version::{Lsn, Version};
use syncdata_producer::archiver::decode::{decode, Event};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for row in text.lines() {
        if let Ok(Event::Change(change)) = decode(row) {
            let record = change.into_record(Version::new(Lsn(1), 1), None);
            if record.validate().is_ok() {
                let again = Record::parse(&record.to_json()).expect("valid records parse");
                assert_eq!(again, record);
                for v in record
                    .data
                    .iter()
                    .chain(&record.old_keys)
                    .flat_map(|c| c.values())
                {
                    let _ = v.to_pg_text();
                }
            }
        }
    }
});
