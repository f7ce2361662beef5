//! Configuration files in the project's TOML format, as the tests, the demo
//! and the benchmarks write them for the binaries they start.

use std::path::Path;

use super::TestNames;

/// A TOML basic string: quoted, with `\`, `"` and control characters
/// escaped.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The settings every configuration file of a test, the demo or a
/// benchmark has: where PostgreSQL and the archive are, and the JetStream
/// names; `data_sync_freq` is the minimum (60).
#[derive(Debug, Clone)]
pub struct ConfigFile<'a> {
    /// `# Written by <it>.` as the first line, when set.
    pub written_by: Option<&'a str>,
    pub pg_host: &'a str,
    pub pg_port: u16,
    pub pg_user: &'a str,
    pub pg_password: Option<&'a str>,
    pub pg_database: &'a str,
    pub archive_dir: &'a Path,
    pub nats_url: &'a str,
    pub names: &'a TestNames,
    /// TOML appended after the `[nats]` table: `[consumer]`, `[producer]`,
    /// `[source]` tables, no top-level keys.
    pub extra: &'a str,
}

impl ConfigFile<'_> {
    /// The file's text.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if let Some(who) = self.written_by {
            s += &format!("# Written by {who}.\n");
        }
        s += &format!("pg_host = {}\n", toml_str(self.pg_host));
        s += &format!("pg_port = {}\n", self.pg_port);
        s += &format!("pg_user = {}\n", toml_str(self.pg_user));
        if let Some(pw) = self.pg_password {
            s += &format!("pg_password = {}\n", toml_str(pw));
        }
        s += &format!("pg_database = {}\n", toml_str(self.pg_database));
        s += &format!(
            "archive_dir = {}\n",
            toml_str(&self.archive_dir.to_string_lossy())
        );
        s += "data_sync_freq = 60\n";
        s += "\n[nats]\n";
        s += &format!("url = {}\n", toml_str(self.nats_url));
        s += &format!("stream = {}\n", toml_str(&self.names.stream));
        s += &format!(
            "subject_prefix = {}\n",
            toml_str(&self.names.subject_prefix)
        );
        s += &format!("dlq_stream = {}\n", toml_str(&self.names.dlq_stream));
        s += &format!(
            "dlq_subject_prefix = {}\n",
            toml_str(&self.names.dlq_subject_prefix)
        );
        s += "\n";
        s += self.extra;
        s += "\n";
        s
    }

    /// Writes the file to `path`, creating its directory.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncdata_core::config::Config;

    #[test]
    fn strings_survive_toml() {
        for s in [
            "plain",
            "a \"quoted\" \\ path",
            "line\nbreak\ttab\u{7f}",
            "",
        ] {
            let v: toml::Value = toml::from_str(&format!("k = {}", toml_str(s))).unwrap();
            assert_eq!(v["k"].as_str(), Some(s));
        }
    }

    #[test]
    fn the_project_accepts_the_file() {
        let names = TestNames::named("S_X", "s_x");
        let file = ConfigFile {
            written_by: Some("a test"),
            pg_host: "127.0.0.1",
            pg_port: 6543,
            pg_user: "demo",
            pg_password: Some("se\"cret"),
            pg_database: "local",
            archive_dir: Path::new("/tmp/a \"dir\"/archive"),
            nats_url: "nats://127.0.0.1:4333",
            names: &names,
            extra: "[consumer]\nbatch_size = 7\n",
        };
        let c = Config::from_toml(&file.text()).unwrap();
        c.validate().unwrap();
        assert_eq!((c.pg_host.as_str(), c.pg_port), ("127.0.0.1", 6543));
        assert_eq!(c.pg_user, "demo");
        assert_eq!(c.pg_password.as_deref(), Some("se\"cret"));
        assert_eq!(c.pg_database.as_deref(), Some("local"));
        assert_eq!(
            c.archive_dir.as_deref(),
            Some(Path::new("/tmp/a \"dir\"/archive"))
        );
        assert_eq!(c.nats.url, "nats://127.0.0.1:4333");
        assert_eq!(c.nats.stream, "S_X");
        assert_eq!(c.nats.subject_prefix, "s_x.changes");
        assert_eq!(c.nats.dlq_stream, "S_X_DLQ");
        assert_eq!(c.nats.dlq_subject_prefix, "s_x.dlq");
        assert_eq!(c.consumer.batch_size, 7);
    }
}
