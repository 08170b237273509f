//! The running process's HTTP endpoint (`--metrics-listen`), read from the command line:
//! `sfzb-host healthcheck` (its `/healthz`, for an image without an HTTP client: the OCI
//! image's HEALTHCHECK) and `sfzb-host status` (its `/subscriptions` as a table).

use std::time::Duration;

use crate::cli::StatusArgs;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "no answer from sfzb-host at {url}: {detail}; is it running with --metrics-listen {address} (SFZB_METRICS_LISTEN)?"
    )]
    Unreachable {
        url: String,
        address: String,
        detail: String,
    },
    #[error("sfzb-host at {url} is unhealthy (HTTP {status}): {body}")]
    Unhealthy {
        url: String,
        status: u16,
        body: String,
    },
    #[error("unexpected answer from {url}: {detail}")]
    Answer { url: String, detail: String },
}

/// How long the endpoint may take: a health check that hangs is a failed one.
const TIMEOUT: Duration = Duration::from_secs(5);

/// `http://ADDRESS`, or the address itself when it names its scheme.
fn base(address: &str) -> String {
    match address.contains("://") {
        true => address.trim_end_matches('/').to_string(),
        false => format!("http://{address}"),
    }
}

async fn get(address: &str, path: &str) -> Result<(u16, String, String), ProbeError> {
    let url = format!("{}{path}", base(address));
    let unreachable = |detail: String| ProbeError::Unreachable {
        url: url.clone(),
        address: address.to_string(),
        detail,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    Ok((status, body, url))
}

/// `/healthz`: its first line when healthy (200), else the error with its reasons.
pub async fn healthcheck(address: &str) -> Result<String, ProbeError> {
    let (status, body, url) = get(address, "/healthz").await?;
    match status {
        200 => Ok(body),
        status => Err(ProbeError::Unhealthy {
            url,
            status,
            body: body.trim().replace('\n', "; "),
        }),
    }
}

/// `/subscriptions` as a terminal table: the counts by state, the checkpoint stores that
/// fail, and one line per subscription the filters select.
pub async fn status(args: &StatusArgs) -> Result<String, ProbeError> {
    let mut query = Vec::new();
    if let Some(org) = &args.org {
        query.push(format!("org={}", urlencode(org)));
    }
    if let Some(state) = &args.state {
        query.push(format!("state={}", urlencode(state)));
    }
    let path = match query.is_empty() {
        true => "/subscriptions".to_string(),
        false => format!("/subscriptions?{}", query.join("&")),
    };
    let (status, body, url) = get(&args.address, &path).await?;
    let bad = |detail: String| ProbeError::Answer {
        url: url.clone(),
        detail,
    };
    if status != 200 {
        return Err(bad(format!("HTTP {status}: {body}")));
    }
    let listed: serde_json::Value = serde_json::from_str(&body).map_err(|e| bad(e.to_string()))?;
    Ok(table(&listed))
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The table of a `/subscriptions` answer.
pub fn table(listed: &serde_json::Value) -> String {
    let mut out = String::new();
    let counts: Vec<String> = listed["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    out.push_str(&format!(
        "{} subscriptions: {}\n",
        listed["total"].as_u64().unwrap_or(0),
        if counts.is_empty() {
            "none".into()
        } else {
            counts.join(", ")
        }
    ));
    for store in listed["checkpoint_stores"].as_array().into_iter().flatten() {
        if store["healthy"] == false {
            out.push_str(&format!(
                "checkpoint store {} failing for {} s: {}\n",
                text(&store["store"]),
                store["failing_for_secs"].as_i64().unwrap_or(0),
                text(&store["error"])
            ));
        }
    }
    let header = [
        "NAME",
        "ORG",
        "STATE",
        "RECEIVED",
        "EVENTS/S",
        "CHECKPOINT AGE",
        "LAG",
        "REASON",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(str::to_string)];
    for s in listed["subscriptions"].as_array().into_iter().flatten() {
        let secs =
            |v: &serde_json::Value| v.as_f64().map_or("-".to_string(), |s| format!("{s:.0} s"));
        rows.push([
            text(&s["name"]),
            text(&s["org"]),
            text(&s["state"]),
            s["received"].as_u64().unwrap_or(0).to_string(),
            s["events_per_second"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.1}")),
            secs(&s["checkpoint_age_secs"]),
            secs(&s["lag_secs"]),
            text(&s["reason"]).chars().take(80).collect(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriptions_answer_is_a_table_with_the_failing_store_first() {
        let listed = serde_json::json!({
            "total": 2,
            "counts": {"running": 1, "failed": 1, "stopped": 0},
            "checkpoint_stores": [{"store": "PostgreSQL", "healthy": false, "failing_for_secs": 12, "error": "refused"}],
            "subscriptions": [
                {"name": "acme/AccountChangeEvent", "org": "acme", "state": "running", "received": 42,
                 "events_per_second": 1.5, "checkpoint_age_secs": 0.4, "lag_secs": 1.2, "reason": null},
                {"name": "globex/AccountChangeEvent", "org": "globex", "state": "failed", "received": 0,
                 "events_per_second": 0.0, "checkpoint_age_secs": null, "lag_secs": null, "reason": "invalid client credentials"},
            ],
        });
        let text = table(&listed);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 subscriptions: 1 failed, 1 running");
        assert_eq!(
            lines[1],
            "checkpoint store PostgreSQL failing for 12 s: refused"
        );
        assert!(lines[2].starts_with("NAME") && lines[2].contains("CHECKPOINT AGE"));
        assert!(
            lines[3].contains("acme") && lines[3].contains("running") && lines[3].contains("1.5")
        );
        assert!(lines[4].contains("failed") && lines[4].ends_with("invalid client credentials"));
        assert_eq!(base("127.0.0.1:9464"), "http://127.0.0.1:9464");
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
    }
}
