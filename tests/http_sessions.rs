//! End to end: browser sessions of the HTTP API. A login gives a cookie with the flags a
//! browser needs (HttpOnly, SameSite=Strict; Secure over HTTPS: tests/tls.rs); requests that
//! change something need the session's CSRF token; sessions end on logout, when unused too
//! long, and when their principal's password changes; other sites' pages change nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::cli::{kenko, path, text};
use common::{http_request, Hub};
use serde_json::json;

fn config(idle_s: u64) -> String {
    let app = common::principal("app-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    format!(
        "{}{app}[http]\nlisten = \"127.0.0.1:0\"\nsession_idle_s = {idle_s}\n",
        common::config_with_devices(1)
    )
}

/// A header of a response (`name: value` lines), by lower-case name.
fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (n, v) = h.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A browser's view of one session: its cookie and CSRF token.
struct Browser {
    api: SocketAddr,
    cookie: String,
    csrf: String,
}

impl Browser {
    /// Logs in with JSON credentials.
    fn login(api: SocketAddr, id: &str, password: &str) -> anyhow::Result<Browser> {
        let body = json!({ "id": id, "password": password }).to_string();
        let (status, headers, answer) = http_request(
            api,
            "POST",
            "/api/v1/session",
            &[("Content-Type", "application/json")],
            &body,
        )?;
        anyhow::ensure!(status == 201, "login: {status} {answer}");
        let set = header(&headers, "set-cookie")
            .unwrap_or_default()
            .to_owned();
        let cookie = set.split(';').next().unwrap_or_default().to_owned();
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        let csrf = answer["csrf_token"].as_str().unwrap_or_default().to_owned();
        Ok(Browser { api, cookie, csrf })
    }

    /// A request with the cookie, and with the CSRF token if `csrf`; status and body.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        csrf: bool,
    ) -> anyhow::Result<(u16, String)> {
        let mut headers = vec![
            ("Cookie", self.cookie.as_str()),
            ("Content-Type", "application/json"),
        ];
        if csrf {
            headers.push(("X-CSRF-Token", self.csrf.as_str()));
        }
        let (status, _, body) = http_request(self.api, method, path, &headers, body)?;
        Ok((status, body))
    }
}

fn consent_body() -> String {
    json!({ "citizen": "citizen-001", "purpose": "research" }).to_string()
}

#[test]
fn a_session_cookie_stands_for_its_principal_and_changes_need_the_csrf_token() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(1800))?;
    let api = hub.http_addr.expect("HTTP API announced");

    // A wrong password gets no cookie.
    let body = json!({ "id": "app-001", "password": "wrong" }).to_string();
    let (status, headers, _) = http_request(
        api,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &body,
    )?;
    assert_eq!(status, 401);
    assert_eq!(header(&headers, "set-cookie"), None);

    let body = json!({ "id": "app-001", "password": common::password("app-001") }).to_string();
    let (status, headers, answer) = http_request(
        api,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &body,
    )?;
    assert_eq!(status, 201, "{answer}");
    let set = header(&headers, "set-cookie").expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP on loopback: no Secure flag: {set}"
    );
    let value = set.split(';').next().unwrap_or_default();
    assert!(
        value.starts_with("kenko_session=") && value.len() == "kenko_session=".len() + 64,
        "{set}"
    );
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    assert_eq!(answer["principal"], "app-001");
    assert_eq!(answer["citizen"], "citizen-001");
    assert_eq!(answer["idle_timeout_s"], 1800);

    let browser = Browser::login(api, "app-001", &common::password("app-001"))?;
    let (status, me) = browser.send("GET", "/api/v1/session", "", false)?;
    assert_eq!(status, 200, "{me}");
    assert!(
        me.contains(&browser.csrf),
        "the page can fetch its CSRF token again: {me}"
    );
    let (status, rows) =
        browser.send("GET", "/api/v1/observations?metric=heart_rate", "", false)?;
    assert_eq!(status, 200, "reads need no CSRF token: {rows}");

    // Changes need the token, and the right one.
    let (status, err) = browser.send("POST", "/api/v1/consents", &consent_body(), false)?;
    assert_eq!(status, 403, "{err}");
    assert!(err.contains("CSRF"), "{err}");
    let forged = Browser {
        csrf: "0".repeat(32),
        ..Browser::login(api, "app-001", &common::password("app-001"))?
    };
    assert_eq!(
        forged
            .send("POST", "/api/v1/consents", &consent_body(), true)?
            .0,
        403
    );
    let (status, recorded) = browser.send("POST", "/api/v1/consents", &consent_body(), true)?;
    assert_eq!(status, 201, "{recorded}");

    // Another session's token does not do for this one, nor a made-up cookie.
    let other = Browser::login(api, "app-001", &common::password("app-001"))?;
    let mixed = Browser {
        csrf: other.csrf.clone(),
        ..Browser::login(api, "app-001", &common::password("app-001"))?
    };
    assert_eq!(
        mixed
            .send("POST", "/api/v1/consents", &consent_body(), true)?
            .0,
        403
    );
    let stranger = Browser {
        api,
        cookie: format!("kenko_session={}", "a".repeat(64)),
        csrf: String::new(),
    };
    assert_eq!(stranger.send("GET", "/api/v1/session", "", false)?.0, 401);

    // Logout ends the session (it needs the token too).
    assert_eq!(browser.send("DELETE", "/api/v1/session", "", false)?.0, 403);
    assert_eq!(browser.send("DELETE", "/api/v1/session", "", true)?.0, 204);
    assert_eq!(browser.send("GET", "/api/v1/session", "", false)?.0, 401);
    assert_eq!(
        other.send("GET", "/api/v1/session", "", false)?.0,
        200,
        "other sessions go on"
    );
    hub.terminate()
}

#[test]
fn other_sites_change_nothing_and_sessions_end_when_unused_or_their_principal_changes(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(1))?;
    let api = hub.http_addr.expect("HTTP API announced");

    // Basic credentials a browser remembers are no good from another site's page.
    let basic = format!(
        "Basic {}",
        common::base64_encode(format!("app-001:{}", common::password("app-001")).as_bytes())
    );
    let from = |origin: &str| -> anyhow::Result<u16> {
        let headers = [
            ("Authorization", basic.as_str()),
            ("Content-Type", "application/json"),
            ("Origin", origin),
        ];
        Ok(http_request(api, "POST", "/api/v1/consents", &headers, &consent_body())?.0)
    };
    assert_eq!(from("https://evil.example")?, 403);
    assert_eq!(
        from(&format!("http://{api}"))?,
        201,
        "the hub's own pages may"
    );
    let login_from_elsewhere = http_request(
        api,
        "POST",
        "/api/v1/session",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "https://evil.example"),
        ],
        &json!({ "id": "app-001", "password": common::password("app-001") }).to_string(),
    )?;
    assert_eq!(
        login_from_elsewhere.0, 403,
        "no login forced on a browser by another site"
    );

    // Unused for longer than session_idle_s (1 s here): ended.
    let idle = Browser::login(api, "app-001", &common::password("app-001"))?;
    assert_eq!(idle.send("GET", "/api/v1/session", "", false)?.0, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(idle.send("GET", "/api/v1/session", "", false)?.0, 401);

    // A principal of registry.db whose password changes loses its sessions.
    let added = kenko(
        &[
            "principal",
            "add",
            "--config",
            &path(&hub.config),
            "--data-dir",
            &path(&hub.data_dir),
            "--id",
            "ops-7",
            "--role",
            "operator",
            "--generate-password",
        ],
        None,
    )?;
    assert!(added.status.success(), "{}", text(&added));
    let stdout = String::from_utf8_lossy(&added.stdout).into_owned();
    let password = stdout
        .lines()
        .find_map(|l| l.split("is stored): ").nth(1))
        .expect("a password")
        .to_owned();
    let ops = common::eventually(Duration::from_secs(5), || {
        Ok(Browser::login(api, "ops-7", &password).ok())
    })?;
    let passwd = kenko(
        &[
            "principal",
            "passwd",
            "--config",
            &path(&hub.config),
            "--data-dir",
            &path(&hub.data_dir),
            "--id",
            "ops-7",
            "--generate-password",
        ],
        None,
    )?;
    assert!(passwd.status.success(), "{}", text(&passwd));
    common::eventually(Duration::from_secs(5), || {
        // Each request keeps the session from going idle meanwhile.
        Ok((ops.send("GET", "/api/v1/session", "", false)?.0 == 401).then_some(()))
    })?;
    hub.terminate()
}

#[test]
fn the_login_page_signs_in_and_out_with_forms() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config(1800))?;
    let api = hub.http_addr.expect("HTTP API announced");
    let (status, headers, page) = http_request(api, "GET", "/login", &[], "")?;
    assert_eq!(status, 200);
    assert!(
        page.contains("<form method=\"post\" action=\"/api/v1/session\">"),
        "{page}"
    );
    assert!(
        page.contains("<label for=\"password\">"),
        "labelled fields: {page}"
    );
    assert_eq!(header(&headers, "x-frame-options"), Some("DENY"));

    let form = format!("id=app-001&password={}", common::password("app-001"));
    let (status, headers, _) = http_request(
        api,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &form,
    )?;
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/console"));
    let cookie = header(&headers, "set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let (_, _, signed_in) = http_request(api, "GET", "/login", &[("Cookie", &cookie)], "")?;
    assert!(
        signed_in.contains("Signed in as <strong>app-001</strong>"),
        "{signed_in}"
    );
    let csrf = signed_in
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the logout form carries the token")
        .to_owned();
    let logout = |token: &str| -> anyhow::Result<u16> {
        let headers = [
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        Ok(http_request(
            api,
            "POST",
            "/logout",
            &headers,
            &format!("csrf_token={token}"),
        )?
        .0)
    };
    assert_eq!(logout("wrong")?, 403);
    assert_eq!(logout(&csrf)?, 303);
    let (_, _, after) = http_request(api, "GET", "/login", &[("Cookie", &cookie)], "")?;
    assert!(
        after.contains("action=\"/api/v1/session\""),
        "signed out: {after}"
    );
    hub.terminate()
}
