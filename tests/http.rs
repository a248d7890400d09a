//! End to end: the HTTP API for consent and queries, with the same access rules as MQTT.

mod common;

use std::time::Duration;

use common::{http, Hub};
use serde_json::json;

fn config() -> String {
    let app = common::principal("app-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    format!(
        "{}{}{}{}{app}[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_with_devices(2),
        common::principal("st-luke", &["care"]),
        common::principal("analyst-1", &["analyst"]),
        common::principal("ops", &["operator"]),
    )
}

fn publish(hub: &Hub, device: &str, ts: i64) -> anyhow::Result<()> {
    hub.publish_as(device, &format!(r#"{{"ts":{ts},"hr":66}}"#))
}

#[test]
fn consents_over_http_decide_who_reads_what() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    let t = common::now_ms() - 60_000;
    publish(&hub, "bed-001", t)?;
    publish(&hub, "bed-002", t)?;
    let q = "/api/v1/observations?metric=heart_rate";

    // Authentication.
    assert_eq!(http(api, "GET", q, None, None)?.0, 401);
    // Care service without consent: nothing identified; a named citizen is refused.
    let (status, rows) = http(api, "GET", q, Some("st-luke"), None)?;
    assert_eq!((status, rows.as_array().map(Vec::len)), (200, Some(0)));
    let named = format!("{q}&citizen=citizen-001");
    assert_eq!(http(api, "GET", &named, Some("st-luke"), None)?.0, 403);

    // The citizen's app grants care for heart rate; it may not speak for another citizen.
    let grant = json!({"citizen": "citizen-001", "purpose": "care", "grantee": "st-luke", "data_types": ["heart_rate"]});
    let (status, record) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&grant),
    )?;
    assert_eq!(status, 201, "{record}");
    assert_eq!(record["source"], "http:app-001");
    let other = json!({"citizen": "citizen-002", "purpose": "care", "grantee": "st-luke"});
    assert_eq!(
        http(
            api,
            "POST",
            "/api/v1/consents",
            Some("app-001"),
            Some(&other)
        )?
        .0,
        403
    );
    let bad = json!({"citizen": "citizen-001", "purpose": "sharing"});
    let (status, err) = http(api, "POST", "/api/v1/consents", Some("ops"), Some(&bad))?;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("unknown purpose"),
        "{err}"
    );

    // Now st-luke reads citizen-001's heart rate, and only that.
    common::eventually(Duration::from_secs(5), || {
        let (_, rows) = http(api, "GET", q, Some("st-luke"), None)?;
        Ok((rows.as_array().map(Vec::len) == Some(1)).then_some(rows))
    })?;
    let (_, rows) = http(api, "GET", q, Some("st-luke"), None)?;
    assert_eq!(rows[0]["citizen"], "citizen-001");
    // Each observation carries its LOINC code, UCUM unit and implausible flag.
    assert_eq!(
        (&rows[0]["loinc"], &rows[0]["unit"], &rows[0]["implausible"]),
        (&json!("8867-4"), &json!("/min"), &json!(false)),
        "{rows}"
    );
    let spo2 = "/api/v1/observations?metric=bed_occupancy&citizen=citizen-001";
    assert_eq!(
        http(api, "GET", spo2, Some("st-luke"), None)?.0,
        403,
        "not granted for that type"
    );
    // The app reads its own citizen, not the other.
    let (_, own) = http(api, "GET", q, Some("app-001"), None)?;
    assert!(own
        .as_array()
        .is_some_and(|r| r.iter().all(|x| x["citizen"] == "citizen-001")));
    assert_eq!(
        http(
            api,
            "GET",
            &format!("{q}&citizen=citizen-002"),
            Some("app-001"),
            None
        )?
        .0,
        403
    );
    // Analysts never see identified data; operators manage consent but do not read it.
    assert_eq!(http(api, "GET", q, Some("analyst-1"), None)?.0, 403);
    assert_eq!(
        http(
            api,
            "GET",
            &format!("{q}&store=shared"),
            Some("analyst-1"),
            None
        )?
        .0,
        200
    );
    assert_eq!(http(api, "GET", q, Some("ops"), None)?.0, 403);

    // Listing, and a withdrawal over HTTP takes effect for queries at once.
    let (status, list) = http(
        api,
        "GET",
        "/api/v1/consents?citizen=citizen-001",
        Some("ops"),
        None,
    )?;
    assert_eq!(status, 200);
    assert_eq!(
        list.as_array().map(Vec::len),
        Some(2),
        "collect (harness) and care: {list}"
    );
    let revoke = json!({"citizen": "citizen-001", "purpose": "care", "grantee": "st-luke", "change": "revoke"});
    assert_eq!(
        http(
            api,
            "POST",
            "/api/v1/consents",
            Some("app-001"),
            Some(&revoke)
        )?
        .0,
        201
    );
    common::eventually(Duration::from_secs(5), || {
        let (_, rows) = http(api, "GET", q, Some("st-luke"), None)?;
        Ok((rows.as_array().map(Vec::len) == Some(0)).then_some(()))
    })?;

    // The CLI applies the same rules.
    let cli = |principal: &str| {
        std::process::Command::new(common::KENKO)
            .args([
                "query",
                "--format",
                "json",
                "--metric",
                "heart_rate",
                "--data-dir",
            ])
            .arg(&hub.data_dir)
            .args(["--principal", principal, "--config"])
            .arg(&hub.config)
            .output()
    };
    let out = cli("analyst-1")?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("analysts query store=shared"));
    let out = cli("app-001")?;
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(rows
        .as_array()
        .is_some_and(|r| !r.is_empty() && r.iter().all(|x| x["citizen"] == "citizen-001")));

    // Identified reads are in the audit log, which verifies.
    let registry = rusqlite::Connection::open(hub.data_dir.join("registry.db"))?;
    let reads: i64 = registry.query_row(
        "SELECT count(*) FROM audit WHERE kind = 'access.identified'",
        [],
        |r| r.get(0),
    )?;
    assert!(reads >= 4, "{reads}");
    let verify = std::process::Command::new(common::KENKO)
        .args(["audit", "verify", "--data-dir"])
        .arg(&hub.data_dir)
        .output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    hub.terminate()
}

#[test]
fn metrics_show_how_long_stored_observations_took_to_become_queryable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    let t = common::now_ms() - 60_000;
    for i in 0..3 {
        publish(&hub, "bed-001", t + i * 1_000)?;
    }
    hub.query_at_least(3, &["--metric", "heart_rate"])?;
    let (status, body) = common::http_text(api, "GET", "/metrics", Some("ops"), None)?;
    assert_eq!(status, 200, "{body}");
    let name = "kenko_ingest_store_delay_seconds";
    let count = common::metric(&body, &format!("{name}_count"));
    let stored = common::metric(&body, "kenko_ingest_observations_stored_total");
    assert_eq!(count, 3.0, "one delay per stored observation:\n{body}");
    assert_eq!(stored, 3.0);
    assert_eq!(
        common::metric(&body, &format!("{name}_bucket{{le=\"+Inf\"}}")),
        3.0
    );
    // Stored by a hub that is not loaded: within a minute, and not in no time at all.
    assert_eq!(
        common::metric(&body, &format!("{name}_bucket{{le=\"60\"}}")),
        3.0
    );
    let sum = common::metric(&body, &format!("{name}_sum"));
    assert!(sum > 0.0 && sum < 180.0, "{sum}");
    hub.terminate()
}

#[test]
fn several_metrics_come_in_one_answer_as_json_csv_or_ndjson() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    let t = common::now_ms() - 60_000;
    hub.publish_as("bed-001", &format!(r#"{{"ts":{t},"hr":66,"rr":14}}"#))?;
    let both = "/api/v1/observations?metric=heart_rate,respiratory_rate";
    let rows = common::eventually(Duration::from_secs(10), || {
        let (_, rows) = http(api, "GET", both, Some("app-001"), None)?;
        Ok((rows.as_array().map(Vec::len) == Some(2)).then_some(rows))
    })?;
    let metrics: Vec<&str> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["metric"].as_str())
        .collect();
    assert_eq!(metrics, vec!["heart_rate", "respiratory_rate"], "{rows}");

    let (status, csv) = common::http_text(
        api,
        "GET",
        &format!("{both}&format=csv"),
        Some("app-001"),
        None,
    )?;
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "time,citizen,device,metric,value,unit,loinc,implausible"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[2].contains(",respiratory_rate,14,"), "{csv}");

    let (status, ndjson) = common::http_text(
        api,
        "GET",
        &format!("{both}&format=ndjson"),
        Some("app-001"),
        None,
    )?;
    assert_eq!(status, 200, "{ndjson}");
    let objects: Vec<serde_json::Value> = ndjson
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[1]["loinc"], "9279-1", "{ndjson}");

    // Every metric must be readable: care consent for heart rate alone refuses the pair.
    common::consent_with(
        &hub.data_dir,
        "grant",
        &["citizen-001"],
        "care",
        &["--grantee", "st-luke", "--types", "heart_rate"],
    )?;
    let heart = "/api/v1/observations?metric=heart_rate&citizen=citizen-001";
    common::eventually(Duration::from_secs(5), || {
        Ok((http(api, "GET", heart, Some("st-luke"), None)?.0 == 200).then_some(()))
    })?;
    let named = format!("{both}&citizen=citizen-001");
    let (status, err) = http(api, "GET", &named, Some("st-luke"), None)?;
    assert_eq!(status, 403, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("respiratory_rate"),
        "{err}"
    );
    for (query, says) in [
        ("metric=heart_rate,heart_rate", "named twice"),
        ("metric=heart_rate&format=xml", "use json, csv or ndjson"),
    ] {
        let (status, err) = http(
            api,
            "GET",
            &format!("/api/v1/observations?{query}"),
            Some("app-001"),
            None,
        )?;
        assert_eq!(status, 400, "{query}: {err}");
        assert!(
            err["error"].as_str().unwrap_or("").contains(says),
            "{query}: {err}"
        );
    }
    hub.terminate()
}

/// The value of header `name` (lower case) among `headers`.
fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (n, v) = h.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn long_answers_come_in_pages_that_a_cursor_walks_through() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    let t = common::now_ms() - 600_000;
    for i in 0..5 {
        let payload = format!(r#"{{"ts":{},"hr":{},"rr":14}}"#, t + i * 1000, 60 + i);
        hub.publish_as("bed-001", &payload)?;
    }
    let all_path = "/api/v1/observations?metric=heart_rate,respiratory_rate";
    let all = common::eventually(Duration::from_secs(10), || {
        let (_, rows) = http(api, "GET", all_path, Some("app-001"), None)?;
        Ok((rows.as_array().map(Vec::len) == Some(10)).then_some(rows))
    })?;
    let (_, headers, _) = common::http_response(api, "GET", all_path, Some("app-001"), None)?;
    assert_eq!(
        header(&headers, "x-next-cursor"),
        None,
        "one page holds it all"
    );

    let mut walked = Vec::new();
    let mut path = format!("{all_path}&limit=3");
    let mut pages = 0;
    loop {
        let (status, headers, body) =
            common::http_response(api, "GET", &path, Some("app-001"), None)?;
        assert_eq!(status, 200, "{body}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        assert!(rows.len() <= 3, "{body}");
        walked.extend(rows);
        pages += 1;
        let Some(link) = header(&headers, "link") else {
            break;
        };
        let cursor = header(&headers, "x-next-cursor").expect("a cursor with the link");
        assert!(
            link.ends_with(&format!("cursor={cursor}>; rel=\"next\"")),
            "{link}"
        );
        path = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .expect("a URL")
            .to_owned();
        anyhow::ensure!(pages < 10, "the cursor does not move on: {path}");
    }
    assert_eq!(pages, 4, "3 + 3 + 3 + 1 rows");
    assert_eq!(
        serde_json::Value::from(walked),
        all,
        "the pages add up to the whole answer"
    );

    let bad = format!("{all_path}&cursor=nonsense");
    let (status, err) = http(api, "GET", &bad, Some("app-001"), None)?;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap_or("").contains("cursor"),
        "{err}"
    );
    let (status, _) = http(
        api,
        "GET",
        &format!("{all_path}&limit=0"),
        Some("app-001"),
        None,
    )?;
    assert_eq!(status, 400);
    hub.terminate()
}

#[test]
fn aggregates_across_citizens_come_from_the_shared_store() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    common::consent(
        &dir.path().join("data"),
        "grant",
        &["citizen-001", "citizen-002"],
        "research",
    )?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    let t = common::now_ms();
    hub.publish_as("bed-001", &format!(r#"{{"ts":{t},"hr":60}}"#))?;
    hub.publish_as("bed-002", &format!(r#"{{"ts":{t},"hr":80}}"#))?;
    hub.publish_as("bed-002", &format!(r#"{{"ts":{},"hr":70}}"#, t + 1))?;
    let across = "/api/v1/observations?metric=heart_rate&store=shared&across=true&every=1d";
    let value = |agg: &str| -> anyhow::Result<Option<f64>> {
        let (status, rows) = http(
            api,
            "GET",
            &format!("{across}&agg={agg}"),
            Some("analyst-1"),
            None,
        )?;
        assert_eq!(status, 200, "{agg}: {rows}");
        let rows = rows.as_array().cloned().unwrap_or_default();
        assert!(rows.len() <= 1, "one bucket: {rows:?}");
        Ok(rows.first().map(|r| {
            assert_eq!((&r["citizen"], &r["device"]), (&json!("*"), &json!("*")));
            r["value"].as_f64().unwrap_or(f64::NAN)
        }))
    };
    common::eventually(Duration::from_secs(10), || {
        Ok((value("count")? == Some(3.0)).then_some(()))
    })?;
    assert_eq!(value("citizens")?, Some(2.0));
    assert_eq!(value("mean")?, Some(70.0), "over readings");
    // Citizens' means are 60 and 75: each citizen counts once.
    assert_eq!(value("median")?, Some(67.5));
    assert_eq!(value("p90")?, Some(73.5));
    assert_eq!(value("max")?, Some(80.0));

    for (who, path, status, says) in [
        ("app-001", across.to_owned(), 403, "shared store"),
        (
            "analyst-1",
            across.replace("store=shared", "store=personal"),
            403,
            "shared store",
        ),
        ("analyst-1", across.replace("&every=1d", ""), 400, "every"),
        (
            "analyst-1",
            format!("{across}&citizen=citizen-001"),
            400,
            "citizen",
        ),
        (
            "analyst-1",
            "/api/v1/observations?metric=heart_rate&store=shared&every=1d&agg=p90".to_owned(),
            400,
            "across=true",
        ),
        ("analyst-1", format!("{across}&agg=p100"), 400, "p1 to p99"),
    ] {
        let (got, err) = http(api, "GET", &path, Some(who), None)?;
        assert_eq!(got, status, "{who} {path}: {err}");
        assert!(
            err["error"].as_str().unwrap_or("").contains(says),
            "{who} {path}: {err}"
        );
    }
    hub.terminate()
}

#[test]
fn operators_see_dead_letters_the_log_and_denials_and_replay_letters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("HTTP API announced");
    hub.publish_as("bed-001", "not json")?;
    let (status, letters) = http(api, "GET", "/api/v1/deadletters", Some("ops"), None)?;
    assert_eq!(status, 200, "{letters}");
    assert_eq!(
        letters["counts"],
        json!([{"reason": "malformed_payload", "count": 1}])
    );
    let letter = &letters["letters"][0];
    assert_eq!(
        (
            &letter["device"],
            &letter["reason_code"],
            &letter["payload_bytes"]
        ),
        (&json!("bed-001"), &json!("malformed_payload"), &json!(8)),
        "{letters}"
    );
    let (status, none) = http(
        api,
        "GET",
        "/api/v1/deadletters?device=bed-002",
        Some("ops"),
        None,
    )?;
    assert_eq!((status, &none["letters"]), (200, &json!([])));

    // A replay runs in the hub's writer; the letter is still malformed, so it stays.
    let body = json!({"reason": "malformed_payload"});
    let (status, request) = http(
        api,
        "POST",
        "/api/v1/deadletters/replay",
        Some("ops"),
        Some(&body),
    )?;
    assert_eq!(status, 202, "{request}");
    let status_path = format!("/api/v1/deadletters/replay/{}", request["id"]);
    let done = common::eventually(Duration::from_secs(10), || {
        let (_, r) = http(api, "GET", &status_path, Some("ops"), None)?;
        Ok(r["done"].is_string().then_some(r))
    })?;
    assert_eq!(
        (&done["replayed"], &done["failed"]),
        (&json!(0), &json!(1)),
        "{done}"
    );

    // A device publishing for another is denied, and the denial is counted against the rules.
    let refused = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.port().to_string(), "-q", "1"])
        .args([
            "-i",
            "bed-001",
            "-u",
            "bed-001",
            "-P",
            &common::password("bed-001"),
        ])
        .args(["-t", "devices/bed-002/telemetry", "-m", "{}"])
        .output()?;
    let _ = refused;
    let denials = common::eventually(Duration::from_secs(5), || {
        let (_, d) = http(api, "GET", "/api/v1/acl/denials", Some("ops"), None)?;
        Ok(d.as_array().filter(|a| !a.is_empty()).cloned())
    })?;
    assert!(denials[0]["count"].as_u64() >= Some(1), "{denials:?}");
    assert!(denials[0]["rule"].is_string(), "{denials:?}");

    // Why: the rules in force, over HTTP as `kenko acl explain` says it, consent included.
    let explain = |query: &str| -> anyhow::Result<serde_json::Value> {
        let path = format!("/api/v1/acl/explain?{query}");
        let (status, answer) = http(api, "GET", &path, Some("ops"), None)?;
        assert_eq!(status, 200, "{answer}");
        Ok(answer)
    };
    let other = explain("principal=bed-001&publish=devices/bed-002/telemetry&qos=1")?;
    assert_eq!(other["allowed"], false, "{other}");
    let text = other["text"].as_str().unwrap_or("");
    assert!(
        text.starts_with("DENY: publish devices/bed-002/telemetry"),
        "{other}"
    );
    let care = explain("principal=st-luke&subscribe=citizens/citizen-001/observations/heart_rate")?;
    assert_eq!(care["allowed"], true, "{care}");
    assert!(care["rule"].is_string(), "{care}");
    let text = care["text"].as_str().unwrap_or("");
    assert!(
        text.contains("consent at") && text.contains("NOT in force"),
        "no care consent yet: {text}"
    );
    // Who is connected now: a watcher that stays.
    let mut watcher = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &hub.port().to_string(),
            "-V",
            "mqttv5",
        ])
        .args([
            "-i",
            "ops-watch",
            "-u",
            "ops",
            "-P",
            &common::password("ops"),
        ])
        .args(["-t", "devices/+/errors", "-W", "30"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let listed = common::eventually(Duration::from_secs(10), || {
        let (_, s) = http(
            api,
            "GET",
            "/api/v1/mqtt/sessions?principal=ops",
            Some("ops"),
            None,
        )?;
        Ok(s.as_array().filter(|a| !a.is_empty()).cloned())
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    let listed = listed?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            &listed[0]["client_id"],
            &listed[0]["protocol"],
            &listed[0]["address"]
        ),
        (&json!("ops-watch"), &json!("5"), &json!("127.0.0.1")),
        "{listed:?}"
    );
    publish(&hub, "bed-001", common::now_ms())?;
    let (status, devices) = http(api, "GET", "/api/v1/devices", Some("ops"), None)?;
    assert_eq!(status, 200, "{devices}");
    let heard: Vec<(&str, u64, bool)> = devices
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let id = d["id"].as_str().unwrap_or_default();
            (
                id,
                d["messages"].as_u64().unwrap_or(0),
                d["last_seen"].is_string(),
            )
        })
        .collect();
    // Two messages of its own; the replay of its dead letter is not one.
    assert_eq!(
        heard,
        [("bed-001", 2, true), ("bed-002", 0, false)],
        "{devices}"
    );
    let (_, silent) = http(
        api,
        "GET",
        "/api/v1/devices?silent_for=1h",
        Some("ops"),
        None,
    )?;
    assert_eq!(silent.as_array().map(Vec::len), Some(1), "{silent}");
    assert_eq!(silent[0]["id"], "bed-002");
    let (status, log) = http(api, "GET", "/api/v1/log", Some("ops"), None)?;
    assert_eq!(status, 200, "{log}");
    assert!(log["bytes"].as_u64() > Some(0), "{log}");
    assert_eq!(
        (&log["full"], &log["failing"]),
        (&json!(false), &json!(false))
    );
    assert!(
        log["sinks"].as_array().is_some_and(|s| !s.is_empty()),
        "{log}"
    );
    hub.terminate()
}
