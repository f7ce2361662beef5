//! Reading the processes' Prometheus endpoints: `GET /metrics` over a plain
//! TCP connection and the few parts of the text exposition the tests, the
//! demo and the benchmarks look at.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// The body of `GET /metrics` on 127.0.0.1:`port` (5 s at most); an error
/// when nothing listens, the answer is not 200, or it takes too long.
pub async fn scrape(port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .context("timed out")??;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200") => {
            Ok(body.to_owned())
        }
        _ => bail!("unexpected answer: {:.80}", text),
    }
}

/// Scrapes 127.0.0.1:`port` until `ok(body)` holds and returns that body;
/// panics after `timeout` with the last body (or why there was none).
pub async fn scrape_until(
    port: u16,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (body, last) = match scrape(port).await {
            Ok(body) => (body.clone(), body),
            Err(e) => (String::new(), format!("(no scrape: {e:#})")),
        };
        if ok(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics on 127.0.0.1:{port} never showed {what}:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The samples of `metric` in an exposition: each one's series (name and
/// labels, as written) and value.
pub fn samples<'a>(body: &'a str, metric: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(move |l| {
            let (series, value) = l.rsplit_once(' ')?;
            if series.split('{').next()? != metric {
                return None;
            }
            Some((series, value.parse::<f64>().ok()?))
        })
}

/// Sum of the samples of `metric` whose labels contain all of `labels`
/// (e.g. `table="public.t"`); None when there is no such sample.
pub fn sample_sum(body: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    samples(body, metric)
        .filter(|(series, _)| labels.iter().all(|l| series.contains(l)))
        .map(|(_, v)| v)
        .reduce(|a, b| a + b)
}

/// The metric names in an exposition (histograms as their `_bucket`,
/// `_sum` and `_count` series).
pub fn exported(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "\
# HELP a_total things
# TYPE a_total counter
a_total{table=\"public.t\",op=\"insert\"} 3
a_total{table=\"public.t\",op=\"delete\"} 2
a_total{table=\"public.u\",op=\"insert\"} 5
a_totals 100
h_bucket{le=\"1\"} 4
g 1.5
";

    #[test]
    fn samples_sums_and_names() {
        assert_eq!(sample_sum(BODY, "a_total", &[]), Some(10.0));
        assert_eq!(
            sample_sum(BODY, "a_total", &["table=\"public.t\""]),
            Some(5.0)
        );
        assert_eq!(
            sample_sum(BODY, "a_total", &["table=\"public.t\"", "op=\"delete\""]),
            Some(2.0)
        );
        assert_eq!(sample_sum(BODY, "a_total", &["table=\"nope\""]), None);
        assert_eq!(sample_sum(BODY, "missing", &[]), None);
        assert_eq!(
            samples(BODY, "g").map(|(_, v)| v).collect::<Vec<_>>(),
            [1.5]
        );
        assert_eq!(
            exported(BODY).into_iter().collect::<Vec<_>>(),
            ["a_total", "a_totals", "g", "h_bucket"]
        );
    }
}
