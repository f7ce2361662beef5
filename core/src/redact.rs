//! Credentials never reach a terminal or a log: the one place that removes
//! them from text that is printed. It handles the forms syncdata meets:
//! URLs with `user:password@` (and NATS's `token@`), query parameters and
//! libpq/TOML/Debug key-value pairs whose key names a password, token,
//! secret or seed. Used by `config check`, the error paths of both binaries
//! and the log writer ([`crate::telemetry`]).

/// What a removed credential is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Key words whose value is a credential (matched case-insensitively
/// anywhere in a key, as in `pg_password`, `PGPASSWORD`, `auth_token`).
const SECRET_WORDS: &[&str] = &["password", "passwd", "pwd", "token", "secret", "seed"];

/// Removes credentials from free text: every URL's userinfo secret and
/// every `key=value` / `key: value` / `key = "value"` whose key names one.
pub fn redact(text: &str) -> String {
    redact_pairs(&redact_urls(text))
}

/// One URL (or a comma-separated list of URLs, as `nats.url` allows).
pub fn redact_url(url: &str) -> String {
    redact(url)
}

fn is_url_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ',' | ')' | ']' | '}'))
}

fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        // The scheme: letters, digits, '+', '-', '.' before "://".
        let scheme_start = rest[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let scheme = &rest[scheme_start..pos];
        out.push_str(&rest[..pos + 3]);
        let after = &rest[pos + 3..];
        let end = after.find(|c: char| !is_url_char(c)).unwrap_or(after.len());
        let url_rest = &after[..end];
        // The authority ends at the first '/', '?' or '#'.
        let auth_end = url_rest.find(['/', '?', '#']).unwrap_or(url_rest.len());
        let authority = &url_rest[..auth_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon + 1]);
                        out.push_str(REDACTED);
                    }
                    // NATS reads a lone userinfo as a token.
                    None if is_nats_scheme(scheme) => out.push_str(REDACTED),
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        out.push_str(&url_rest[auth_end..]);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_nats_scheme(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "nats" | "tls" | "ws" | "wss"
    )
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn redact_pairs(text: &str) -> String {
    let bytes = text.as_bytes();
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let word = SECRET_WORDS
            .iter()
            .find(|w| lower.as_bytes()[i..].starts_with(w.as_bytes()));
        let Some(word) = word else {
            i += 1;
            continue;
        };
        // The rest of the key (`password_file`, `tokens`, …).
        let mut j = i + word.len();
        while j < bytes.len() && is_word_char(bytes[j]) {
            j += 1;
        }
        let key = &lower[i..j];
        // A path or a file name is not the secret itself.
        let names_a_file = key.ends_with("_file") || key.ends_with("_path");
        // Closing quote of a quoted key (JSON), spaces, then '=' or ':'.
        let mut k = j;
        if k < bytes.len() && bytes[k] == b'"' {
            k += 1;
        }
        while k < bytes.len() && bytes[k] == b' ' {
            k += 1;
        }
        if names_a_file || k >= bytes.len() || !(bytes[k] == b'=' || bytes[k] == b':') {
            i = j;
            continue;
        }
        // "://" is a URL scheme, not a separator.
        if text[k..].starts_with("://") {
            i = j;
            continue;
        }
        k += 1;
        while k < bytes.len() && bytes[k] == b' ' {
            k += 1;
        }
        if text[k..].starts_with("Some(") {
            k += "Some(".len();
        }
        let (start, end) = match bytes.get(k) {
            Some(&q @ (b'"' | b'\'')) => {
                // A quoted value: up to the closing quote (backslash escapes
                // skipped).
                let mut escaped = false;
                let e = text[k + 1..]
                    .char_indices()
                    .find(|&(_, c)| {
                        let close = !escaped && c == q as char;
                        escaped = !escaped && c == '\\';
                        close
                    })
                    .map_or(bytes.len(), |(e, _)| k + 1 + e);
                (k + 1, e)
            }
            _ => {
                let e = text[k..]
                    .find(|c: char| {
                        c.is_whitespace() || matches!(c, '&' | ';' | ',' | ')' | '}' | ']' | '"')
                    })
                    .map_or(bytes.len(), |e| k + e);
                (k, e)
            }
        };
        let value = &text[start..end];
        if value.is_empty() || value == REDACTED || value == "None" || value == "null" {
            i = end.max(j);
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(REDACTED);
        copied = end;
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_passwords_and_nats_tokens_go() {
        assert_eq!(
            redact("nats://alice:s3cret@nats:4222"),
            "nats://alice:<redacted>@nats:4222"
        );
        assert_eq!(redact("nats://t0ken@h:4222"), "nats://<redacted>@h:4222");
        assert_eq!(
            redact("nats://a:b@h1:4222,nats://c:d@h2:4222"),
            "nats://a:<redacted>@h1:4222,nats://c:<redacted>@h2:4222"
        );
        assert_eq!(
            redact("cannot connect to postgres://reader:pw@db:5432/app: refused"),
            "cannot connect to postgres://reader:<redacted>@db:5432/app: refused"
        );
        assert_eq!(
            redact("postgres://reader@db/app"),
            "postgres://reader@db/app"
        );
        assert_eq!(
            redact("url: \"nats://127.0.0.1:4222\""),
            "url: \"nats://127.0.0.1:4222\""
        );
    }

    #[test]
    fn key_value_secrets_go() {
        assert_eq!(
            redact("postgres://db/app?sslmode=require&password=hunter2&x=1"),
            "postgres://db/app?sslmode=require&password=<redacted>&x=1"
        );
        assert_eq!(
            redact("host=db password='a b' user=u"),
            "host=db password='<redacted>' user=u"
        );
        assert_eq!(
            redact("pg_password: Some(\"hunter2\"),"),
            "pg_password: Some(\"<redacted>\"),"
        );
        assert_eq!(redact("token = \"abc\""), "token = \"<redacted>\"");
        assert_eq!(
            redact("{\"auth_token\":\"abc\"}"),
            "{\"auth_token\":\"<redacted>\"}"
        );
        assert_eq!(redact("PGPASSWORD=x ls"), "PGPASSWORD=<redacted> ls");
        // Not credentials.
        for keep in [
            "dot-separated tokens without wildcards",
            "password: None",
            "creds_file: Some(\"/etc/x.creds\")",
            "token_file = \"/run/secrets/t\"",
            "use PGPASSWORD or ~/.pgpass",
            "pg_password: Some(\"<redacted>\")",
        ] {
            assert_eq!(redact(keep), keep);
        }
    }

    #[test]
    fn hostile_text_never_panics() {
        for s in [
            "password=",
            "password:\"",
            "://",
            "a://@",
            "token: Some(",
            "x\u{e9}password=\u{e9}",
        ] {
            let _ = redact(s);
        }
    }
}
