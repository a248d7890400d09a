//! End to end: the HTTP API's inputs are bounded and checked in the right order: a stranger
//! gets 401 whatever the request looks like, a principal's requests are rate-limited, a
//! stored text has a length limit, and a failure inside the hub shows an error id, not paths.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use common::{http, Hub};
use serde_json::json;

fn config(http_section: &str) -> String {
    let app = common::principal("app-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    format!(
        "{}{}{}{app}[http]\nlisten = \"127.0.0.1:0\"\n{http_section}",
        common::config_with_devices(1),
        common::principal("st-luke", &["care"]),
        common::principal("analyst-1", &["analyst"]),
    )
}

/// Rows of consent records and of audit entries in the hub's registry.db.
fn registry_counts(hub: &Hub) -> anyhow::Result<(i64, i64)> {
    let db = rusqlite::Connection::open(hub.data_dir.join("registry.db"))?;
    let count = |table: &str| -> anyhow::Result<i64> {
        Ok(db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
    };
    Ok((count("consents")?, count("audit")?))
}

/// One raw HTTP/1.1 request; the whole response (status line, headers, body) as text.
fn raw(addr: SocketAddr, request: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

fn get_as(addr: SocketAddr, path: &str, principal: &str) -> String {
    let token =
        common::base64_encode(format!("{principal}:{}", common::password(principal)).as_bytes());
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Basic {token}\r\n\r\n")
}

#[test]
fn a_long_source_is_refused_by_name_and_nothing_is_stored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(""))?;
    let api = hub.http_addr.context("HTTP API announced")?;
    let before = registry_counts(&hub)?;

    // Just under the 2 MiB body limit, so that it is the field that is refused.
    let grant = |source: String| json!({"citizen": "citizen-001", "purpose": "care", "grantee": "st-luke", "source": source});
    let long = grant("x".repeat(2_000_000));
    let (status, err) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&long),
    )?;
    assert_eq!(status, 400, "{err}");
    assert_eq!(
        err["error"],
        "source is 2000000 bytes long; at most 256 bytes are allowed"
    );
    let just_over = grant("y".repeat(257));
    let (status, err) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&just_over),
    )?;
    assert_eq!(status, 400, "{err}");
    // Other fields are bounded as well, and refused without being echoed.
    let many = json!({"citizen": "citizen-001", "purpose": "collect", "data_types": vec!["heart_rate"; 1000]});
    let (status, err) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&many),
    )?;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("more than once"),
        "{err}"
    );
    let purpose = json!({"citizen": "citizen-001", "purpose": "p".repeat(100_000)});
    let (status, err) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&purpose),
    )?;
    assert_eq!(status, 400, "{err}");
    assert!(err.to_string().len() < 200, "{err}");
    let citizen = json!({"citizen": "c".repeat(100_000), "purpose": "collect"});
    let (status, err) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("ops-x"),
        Some(&citizen),
    )?;
    assert_eq!(status, 401, "no such principal: {err}");
    let (status, err) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("operator-1"),
        Some(&citizen),
    )?;
    assert_eq!(status, 400, "{err}");
    assert!(err.to_string().len() < 200, "{err}");
    assert_eq!(
        registry_counts(&hub)?,
        before,
        "nothing recorded, nothing audited"
    );

    // At the limit it is recorded.
    let (status, record) = http(
        api,
        "POST",
        "/api/v1/consents",
        Some("app-001"),
        Some(&grant("z".repeat(256))),
    )?;
    assert_eq!(status, 201, "{record}");
    assert_eq!((before.0 + 1, before.1 + 1), registry_counts(&hub)?);

    // The CLI applies the same limit.
    let out = std::process::Command::new(common::KENKO)
        .args(["consent", "grant", "--data-dir"])
        .arg(&hub.data_dir)
        .args([
            "--citizen",
            "citizen-001",
            "--purpose",
            "collect",
            "--source",
        ])
        .arg("s".repeat(300))
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("source is 300 bytes long; at most 256"),
        "{stderr}"
    );
    assert_eq!((before.0 + 1, before.1 + 1), registry_counts(&hub)?);
    hub.terminate()
}

#[test]
fn a_stranger_gets_401_whatever_the_query_or_body() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(""))?;
    let api = hub.http_addr.context("HTTP API announced")?;
    let not_a_body = json!("not a consent");
    for (method, path, body) in [
        ("GET", "/api/v1/observations", None),
        (
            "GET",
            "/api/v1/observations?metric=heart_rate&limit=many",
            None,
        ),
        ("GET", "/api/v1/consents?citizen=a&citizen=b", None),
        ("POST", "/api/v1/consents", Some(&not_a_body)),
    ] {
        let (status, err) = http(api, method, path, None, body)?;
        assert_eq!(status, 401, "{method} {path}: {err}");
        // The same requests with credentials are refused for what they are.
        let (status, err) = http(api, method, path, Some("operator-1"), body)?;
        assert_eq!(status, 400, "{method} {path}: {err}");
        assert!(err["error"].is_string(), "a JSON error: {err}");
    }
    hub.terminate()
}

#[test]
fn each_principal_is_rate_limited_with_429_and_retry_after() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(
        dir.path(),
        &config("requests_per_s = 1\nrequest_burst = 3\n"),
    )?;
    let api = hub.http_addr.context("HTTP API announced")?;
    let path = "/api/v1/observations?metric=heart_rate&store=shared";
    let statuses: Vec<u16> = (0..3)
        .map(|_| http(api, "GET", path, Some("analyst-1"), None).map(|r| r.0))
        .collect::<Result<_, _>>()?;
    assert_eq!(statuses, [200, 200, 200]);
    let refused = raw(api, &get_as(api, path, "analyst-1"))?;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    let retry_after: u64 = refused
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_owned())
        })
        .context("no Retry-After")?
        .parse()?;
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert!(refused.contains("try again in"), "{refused}");
    // Another principal has a bucket of its own.
    let (status, _) = http(
        api,
        "GET",
        "/api/v1/observations?metric=heart_rate",
        Some("st-luke"),
        None,
    )?;
    assert_eq!(status, 200);
    // A stranger's requests take nothing from the principal's bucket, and after the wait
    // the principal is served again.
    std::thread::sleep(Duration::from_secs(retry_after));
    assert_eq!(http(api, "GET", path, None, None)?.0, 401);
    assert_eq!(http(api, "GET", path, Some("analyst-1"), None)?.0, 200);
    hub.terminate()
}

#[test]
fn a_500_shows_an_error_id_and_the_log_has_the_details() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(""))?;
    let api = hub.http_addr.context("HTTP API announced")?;
    let path = "/api/v1/observations?metric=heart_rate&store=shared";
    assert_eq!(http(api, "GET", path, Some("analyst-1"), None)?.0, 200);

    // The shared store's write-ahead file becomes unreadable: a directory takes its name.
    // The store file itself is untouched (the hub's file guard sees nothing wrong) and the
    // hub's own writer keeps the file it opened, but a new reader cannot open the store.
    let shared_wal = hub.data_dir.join("shared.db-wal");
    std::fs::rename(&shared_wal, hub.data_dir.join("shared.db-wal.moved"))?;
    std::fs::create_dir(&shared_wal)?;
    let (status, err) = http(api, "GET", path, Some("analyst-1"), None)?;
    assert_eq!(status, 500, "{err}");
    let id = err["error_id"].as_str().context("an error id")?.to_owned();
    assert!(!id.is_empty());
    let text = err.to_string();
    assert!(text.contains(&id), "{text}");
    let data_dir = hub.data_dir.display().to_string();
    assert!(
        !text.contains(&data_dir) && !text.contains("shared.db") && !text.contains('/'),
        "{text}"
    );

    // The log has the details, under the same id.
    let logged = common::eventually(Duration::from_secs(5), || {
        Ok(hub.stderr_lines().into_iter().find(|l| l.contains(&id)))
    })?;
    assert!(logged.contains("shared.db"), "{logged}");
    hub.terminate()
}
