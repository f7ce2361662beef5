//! JSON paths inside json/jsonb values: `$.a.b`, `$.list[0]`, `$.list[*].email`,
//! `$.*`, `$["odd key"]`. Only the containers on a matched path are
//! rewritten (compactly); everything else, numbers included, keeps its exact
//! text, so nothing passes through f64.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
    /// Every member of an object or element of an array.
    Wild,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let rest = text
            .strip_prefix('$')
            .ok_or_else(|| format!("JSON path {text:?} must start with `$`"))?;
        let bad = |why: &str| format!("JSON path {text:?}: {why}");
        let mut steps = Vec::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' => {
                    let mut name = String::new();
                    while let Some(&c) = chars.peek() {
                        if c == '.' || c == '[' {
                            break;
                        }
                        name.push(c);
                        chars.next();
                    }
                    match name.as_str() {
                        "" => return Err(bad("empty member name after `.`")),
                        "*" => steps.push(Step::Wild),
                        _ => steps.push(Step::Key(name)),
                    }
                }
                '[' => {
                    let mut inner = String::new();
                    let mut quote = None;
                    loop {
                        let Some(c) = chars.next() else {
                            return Err(bad("unclosed `[`"));
                        };
                        match (quote, c) {
                            (None, ']') => break,
                            (None, '\'' | '"') if inner.is_empty() => quote = Some(c),
                            (Some(q), c) if c == q => {
                                if chars.next() != Some(']') {
                                    return Err(bad("expected `]` after a quoted name"));
                                }
                                break;
                            }
                            (Some(_), '\\') => match chars.next() {
                                Some(c) => inner.push(c),
                                None => return Err(bad("unclosed `[`")),
                            },
                            (_, c) => inner.push(c),
                        }
                    }
                    if quote.is_some() {
                        steps.push(Step::Key(inner));
                    } else if inner == "*" {
                        steps.push(Step::Wild);
                    } else {
                        let i = inner
                            .trim()
                            .parse()
                            .map_err(|_| bad("`[…]` holds an index, `*` or a quoted name"))?;
                        steps.push(Step::Index(i));
                    }
                }
                _ => return Err(bad("expected `.` or `[`")),
            }
        }
        if steps.is_empty() {
            return Err(bad(
                "names nothing inside the value (use a column transform for the whole value)",
            ));
        }
        Ok(JsonPath {
            text: text.to_owned(),
            steps,
        })
    }
}

/// An object's members in their original order (duplicates kept).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    out.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What the leaf function does with a matched value.
pub enum Leaf {
    Keep,
    Replace(String),
    Remove,
}

/// Applies `f` to every value at `path` in the JSON text `json`. Returns the
/// new text, or None when nothing matched or changed. Errors: `json` is not
/// JSON, or `f` failed.
pub fn apply<E>(
    json: &str,
    path: &JsonPath,
    f: &mut dyn FnMut(&str) -> Result<Leaf, E>,
) -> Result<Option<String>, ApplyError<E>> {
    let root: &RawValue = serde_json::from_str(json).map_err(|_| ApplyError::NotJson)?;
    walk(root.get(), &path.steps, f)
}

#[derive(Debug)]
pub enum ApplyError<E> {
    NotJson,
    Leaf(E),
}

fn walk<E>(
    raw: &str,
    steps: &[Step],
    f: &mut dyn FnMut(&str) -> Result<Leaf, E>,
) -> Result<Option<String>, ApplyError<E>> {
    let Some((step, rest)) = steps.split_first() else {
        unreachable!("paths have at least one step and leaves are handled by the parent");
    };
    // What to do with one child: Ok(None) unchanged, Some(None) removed,
    // Some(Some(text)) replaced.
    let mut child = |text: &str| -> Result<Option<Option<String>>, ApplyError<E>> {
        if rest.is_empty() {
            return match f(text).map_err(ApplyError::Leaf)? {
                Leaf::Keep => Ok(None),
                Leaf::Replace(t) => Ok(Some(Some(t))),
                Leaf::Remove => Ok(Some(None)),
            };
        }
        Ok(walk(text, rest, f)?.map(Some))
    };
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => {
            let members: Members = serde_json::from_str(raw).map_err(|_| ApplyError::NotJson)?;
            let mut changed = false;
            let mut out: Vec<(Cow<str>, Cow<str>)> = Vec::with_capacity(members.0.len());
            for (k, v) in members.0 {
                let hit = match step {
                    Step::Key(name) => *name == *k,
                    Step::Wild => true,
                    Step::Index(_) => false,
                };
                if !hit {
                    out.push((k, Cow::Borrowed(v.get())));
                    continue;
                }
                match child(v.get())? {
                    None => out.push((k, Cow::Borrowed(v.get()))),
                    Some(Some(t)) => {
                        changed = true;
                        out.push((k, Cow::Owned(t)));
                    }
                    Some(None) => changed = true,
                }
            }
            if !changed {
                return Ok(None);
            }
            let mut s = String::with_capacity(raw.len());
            s.push('{');
            for (i, (k, v)) in out.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&serde_json::to_string(k.as_ref()).expect("a string serializes"));
                s.push(':');
                s.push_str(v);
            }
            s.push('}');
            Ok(Some(s))
        }
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(raw).map_err(|_| ApplyError::NotJson)?;
            let mut changed = false;
            let mut out: Vec<Cow<str>> = Vec::with_capacity(items.len());
            for (i, v) in items.into_iter().enumerate() {
                let hit = match step {
                    Step::Index(n) => *n == i,
                    Step::Wild => true,
                    Step::Key(_) => false,
                };
                if !hit {
                    out.push(Cow::Borrowed(v.get()));
                    continue;
                }
                match child(v.get())? {
                    None => out.push(Cow::Borrowed(v.get())),
                    Some(Some(t)) => {
                        changed = true;
                        out.push(Cow::Owned(t));
                    }
                    Some(None) => changed = true,
                }
            }
            if !changed {
                return Ok(None);
            }
            Ok(Some(format!("[{}]", out.join(","))))
        }
        // A scalar where the path expects a container: no match.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(json: &str, path: &str, leaf: impl Fn(&str) -> Leaf) -> Option<String> {
        let path = JsonPath::parse(path).unwrap();
        apply::<()>(json, &path, &mut |v| Ok(leaf(v))).unwrap()
    }

    #[test]
    fn parses_paths() {
        let p = JsonPath::parse("$.a[2]['b.c'][*].*").unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Key("a".into()),
                Step::Index(2),
                Step::Key("b.c".into()),
                Step::Wild,
                Step::Wild
            ]
        );
        assert_eq!(
            JsonPath::parse(r#"$["x\"y"]"#).unwrap().steps,
            vec![Step::Key("x\"y".into())]
        );
        for bad in ["a.b", "$", "$.", "$[", "$[x]", "$.a..b", "$a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replaces_and_removes_only_what_matches() {
        let doc = r#"{"n": 123456789012345678901234567890.5, "user": {"email": "a@b.c", "age": 3}, "list": [{"email": "x"}, {"other": 1}, 7]}"#;
        let out = run(doc, "$.user.email", |_| {
            Leaf::Replace("\"redacted\"".into())
        })
        .unwrap();
        assert_eq!(
            out,
            r#"{"n":123456789012345678901234567890.5,"user":{"email":"redacted","age":3},"list":[{"email": "x"}, {"other": 1}, 7]}"#
        );
        let out = run(doc, "$.list[*].email", |_| Leaf::Remove).unwrap();
        assert!(out.contains(r#""list":[{},{"other": 1},7]"#), "{out}");
        assert!(out.contains(r#""email": "a@b.c""#), "{out}");
        let out = run(doc, "$.list[2]", |v| Leaf::Replace(format!("{v}0"))).unwrap();
        assert!(
            out.contains(r#""list":[{"email": "x"},{"other": 1},70]"#),
            "{out}"
        );
        assert_eq!(run(doc, "$.missing.x", |_| Leaf::Remove), None);
        assert_eq!(run(doc, "$.n.x", |_| Leaf::Remove), None);
        assert_eq!(run(doc, "$.user.email", |_| Leaf::Keep), None);
        let out = run(doc, "$.user.*", |_| Leaf::Replace("null".into())).unwrap();
        assert!(out.contains(r#""user":{"email":null,"age":null}"#), "{out}");
    }

    #[test]
    fn invalid_json_is_an_error() {
        let path = JsonPath::parse("$.a").unwrap();
        let r = apply::<()>("{not json", &path, &mut |_| Ok(Leaf::Remove));
        assert!(matches!(r, Err(ApplyError::NotJson)));
    }
}
