//! JSON paths: any path text parses or is an error; applying a path to any
//! JSON text never panics, and with a leaf function that keeps every value
//! nothing changes, while one that replaces leaves yields valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncdata_producer::sanitize::json_path::{self, JsonPath, Leaf};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path_text, json) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(path) = JsonPath::parse(path_text) else {
        return;
    };
    // Only for JSON that a strict parser takes (the sanitizer's values).
    if serde_json::from_str::<serde_json::Value>(json).is_err() {
        let _ = json_path::apply::<()>(json, &path, &mut |_| Ok(Leaf::Remove));
        return;
    }
    let kept = json_path::apply::<()>(json, &path, &mut |_| Ok(Leaf::Keep));
    if let Ok(changed) = kept {
        assert_eq!(changed, None, "keeping every leaf changed the text");
    }
    let mut flip = false;
    let replaced = json_path::apply::<()>(json, &path, &mut |_| {
        flip = !flip;
        Ok(if flip {
            Leaf::Replace("\"x\"".to_owned())
        } else {
            Leaf::Remove
        })
    });
    if let Ok(Some(new)) = replaced {
        let v: Result<serde_json::Value, _> = serde_json::from_str(&new);
        assert!(v.is_ok(), "rewritten JSON does not parse");
    }
});
