//! The web console in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver) against a running `kenko serve`. A citizen signs in, sees last night's
//! sleep and a heart-rate chart of the simulator's data, switches language, and withdraws
//! care consent; the care service then can no longer read the citizen. A care service sees
//! the alert a desaturation raised, for its consented citizen only, and acknowledges it; a
//! device id holding `<script>` shows as text. An operator sees a device go offline when its
//! simulator stops, replays a dead letter, and asks the ACL rules about a publish.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cli::{path, text};
use common::readings::{desaturation, publish};
use common::{http_request, Hub};
use fantoccini::{Client, ClientBuilder, Locator};
use jiff::tz::TimeZone;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const DAY_MS: i64 = 24 * 3_600_000;

fn config() -> String {
    let app = common::principal("app-citizen-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    let care = common::principal("care-team", &["care"]);
    format!(
        "{}{app}{care}[windows]\ngrace_min = 0\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_for_simulation(1)
    )
}

/// A headless Chromium under chromedriver, stopped when dropped.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> anyhow::Result<Browser> {
        for tool in [CHROMEDRIVER, CHROMIUM] {
            anyhow::ensure!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let profile = tempfile::tempdir()?;
        let options = serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--no-first-run", "--lang=en-US",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if std::time::Instant::now() > deadline => {
                    anyhow::bail!("chromedriver on {url} did not start a browser: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Browser {
            driver,
            client,
            _profile: profile,
        })
    }

    async fn text(&self, css: &str) -> anyhow::Result<String> {
        Ok(self.client.find(Locator::Css(css)).await?.text().await?)
    }

    /// Signs in at `/login` and waits for the console.
    async fn sign_in(&self, base: &str, id: &str) -> anyhow::Result<()> {
        let c = &self.client;
        c.goto(&format!("{base}/login")).await?;
        c.find(Locator::Css("#id")).await?.send_keys(id).await?;
        c.find(Locator::Css("#password"))
            .await?
            .send_keys(&common::password(id))
            .await?;
        c.find(Locator::Css("button[type=submit]"))
            .await?
            .click()
            .await?;
        c.wait().for_element(Locator::Css("main")).await?;
        anyhow::ensure!(
            c.current_url().await?.path() == "/console",
            "not on /console"
        );
        Ok(())
    }

    async fn close(mut self) -> anyhow::Result<()> {
        self.client.clone().close().await?;
        self.driver.kill()?;
        self.driver.wait()?;
        Ok(())
    }
}

/// 18:00 in Tokyo two days ago: a sleep day the hub has closed.
fn sleep_day_start() -> jiff::Zoned {
    let jst = TimeZone::get("Asia/Tokyo").expect("tz");
    let then = jiff::Timestamp::from_millisecond(common::now_ms() - 2 * DAY_MS)
        .expect("time")
        .to_zoned(jst.clone());
    then.date()
        .at(18, 0, 0, 0)
        .to_zoned(jst)
        .expect("local time")
}

/// Replays one sleep day of bed-001 (a reading every 30 s) through `kenko simulate`.
fn replay_a_night(hub: &Hub, dir: &std::path::Path) -> anyhow::Result<()> {
    let passwords = common::password_file(dir, 1)?;
    let from = sleep_day_start();
    let until = from.checked_add(jiff::Span::new().hours(24))?;
    let output = Command::new(common::KENKO)
        .args(["simulate", "--broker", &hub.addr.to_string()])
        .args(["--passwords", &path(&passwords)])
        .args(["--kinds", "bed", "--devices", "1", "--step", "30"])
        .args(["--from", &from.timestamp().to_string()])
        .args(["--until", &until.timestamp().to_string()])
        .output()?;
    anyhow::ensure!(output.status.success(), "simulate: {}", text(&output));
    Ok(())
}

/// What the care service gets for citizen-001's heart rate over the API.
fn care_reads(api: std::net::SocketAddr) -> anyhow::Result<u16> {
    let auth = format!(
        "Basic {}",
        common::base64_encode(format!("care-team:{}", common::password("care-team")).as_bytes())
    );
    let (status, _, _) = http_request(
        api,
        "GET",
        "/api/v1/observations?metric=heart_rate&citizen=citizen-001&from=-4d&limit=1",
        &[("Authorization", &auth)],
        "",
    )?;
    Ok(status)
}

/// A browser session of principal `id`: its cookie.
fn session(api: std::net::SocketAddr, id: &str) -> anyhow::Result<String> {
    let login = format!(r#"{{"id":"{id}","password":"{}"}}"#, common::password(id));
    let (_, headers, _) = http_request(
        api,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        &login,
    )?;
    headers
        .iter()
        .find_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim())
        })
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))
}

/// Whether the care service's console page lists citizen-001 among the citizens in its care.
fn care_page_lists_the_citizen(api: std::net::SocketAddr, cookie: &str) -> anyhow::Result<bool> {
    let (status, _, page) = http_request(api, "GET", "/console", &[("Cookie", cookie)], "")?;
    anyhow::ensure!(status == 200, "care page: {status}");
    Ok(page.contains(r#"<tr data-citizen="citizen-001">"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_sees_their_night_and_withdraws_care_consent_in_a_browser() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let api = hub.http_addr.expect("http listener");
    // Care consent for heart rate only: what granting again must give back, not more.
    common::consent_with(
        &dir.path().join("data"),
        "grant",
        &["citizen-001"],
        "care",
        &["--grantee", "care-team", "--types", "heart_rate"],
    )?;
    replay_a_night(&hub, dir.path())?;
    let night = || -> anyhow::Result<Option<f64>> {
        let rows = hub.query(&[
            "--metric",
            "sleep_time",
            "--citizen",
            "citizen-001",
            "--from",
            "-4d",
        ])?;
        Ok(rows.last().and_then(|r| r["value"].as_f64()))
    };
    common::eventually(Duration::from_secs(60), night)?;
    // The consent is in force once the hub's consent book has read it.
    common::eventually(Duration::from_secs(10), || {
        Ok((care_reads(api)? == 200).then_some(()))
    })?;
    let care = session(api, "care-team")?;
    assert!(
        care_page_lists_the_citizen(api, &care)?,
        "in the care service's view"
    );

    let browser = Browser::start().await?;
    let base = format!("http://{api}");
    let c = &browser.client;
    c.goto(&format!("{base}/console")).await?;
    assert!(
        c.current_url().await?.path().ends_with("/login"),
        "no session: to the login page"
    );
    browser.sign_in(&base, "app-citizen-001").await?;

    // English, as the browser asks; last night's sleep as the hub has it (the window is
    // computed again while the replayed night is still being stored: the page and the store
    // agree once it is final).
    let shown_as = |minutes: f64| {
        let minutes = minutes.round() as i64;
        format!("{} h {} min", minutes / 60, minutes % 60)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        c.goto(&format!("{base}/console?lang=en")).await?;
        let on_page = browser.text("dd[data-metric=sleep_time]").await?;
        let stored = night()?.map(shown_as);
        if stored.as_deref() == Some(on_page.as_str()) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the page says {on_page}, the store {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let points = c
        .find(Locator::Css("article[data-metric=heart_rate] svg polyline"))
        .await?
        .attr("points")
        .await?
        .unwrap_or_default();
    assert!(
        points.split(' ').count() > 10,
        "a heart-rate line: {points}"
    );
    assert!(
        browser.text("#reads").await?.contains("care-team"),
        "the care service's read is listed"
    );

    // All of the citizen's data from the download link: per metric, what kenko query prints.
    let href = c
        .find(Locator::Css("a#export-csv"))
        .await?
        .attr("href")
        .await?
        .unwrap_or_default();
    let cookie = format!(
        "kenko_session={}",
        c.get_named_cookie("kenko_session").await?.value()
    );
    let (status, _, export) = http_request(api, "GET", &href, &[("Cookie", &cookie)], "")?;
    assert_eq!(status, 200, "{export}");
    let json_href = href.replace("format=csv", "format=ndjson");
    let (_, _, json_lines) = http_request(api, "GET", &json_href, &[("Cookie", &cookie)], "")?;
    let objects: Vec<serde_json::Value> = json_lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(
        objects.len() + 1,
        export.lines().count(),
        "the same rows as JSON lines"
    );
    let mut lines = export.lines();
    let header = lines.next().unwrap_or_default().to_owned();
    let exported: Vec<&str> = lines.collect();
    for metric in ["heart_rate", "sleep_time", "sleep_stage"] {
        let printed = common::cli::kenko(
            &[
                "query",
                "--data-dir",
                &path(&hub.data_dir),
                "--metric",
                metric,
                "--citizen",
                "citizen-001",
                "--from",
                "-30d",
            ],
            None,
        )?;
        let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
        let mut printed = printed.lines();
        assert_eq!(printed.next(), Some(header.as_str()));
        let expected: Vec<&str> = printed.collect();
        let mine: Vec<&str> = exported
            .iter()
            .copied()
            .filter(|l| l.split(',').nth(3) == Some(metric))
            .collect();
        assert!(!expected.is_empty(), "{metric} stored");
        assert_eq!(mine, expected, "{metric} exported as kenko query prints it");
    }

    // A goal no night can have is refused with a page that says why.
    let goal = "div[data-goal=sleep_time]";
    c.find(Locator::Css(&format!("{goal} input[name=target]")))
        .await?
        .send_keys("100000")
        .await?;
    c.find(Locator::Css(&format!("{goal} button")))
        .await?
        .click()
        .await?;
    c.wait().for_element(Locator::Css("p[role=alert]")).await?;
    let why = browser.text("p[role=alert]").await?;
    assert!(why.contains("outside what the metric can be"), "{why}");
    assert!(browser.text("h1").await?.starts_with("400"));
    c.goto(&format!("{base}/console?lang=en")).await?;

    // A sleep goal of 8 hours: the night replayed (more than 8 hours asleep) meets it.
    c.find(Locator::Css(&format!("{goal} input[name=target]")))
        .await?
        .send_keys("480")
        .await?;
    c.find(Locator::Css(&format!("{goal} button")))
        .await?
        .click()
        .await?;
    c.wait()
        .for_element(Locator::Css(&format!("{goal} .goal-status")))
        .await?;
    assert_eq!(
        browser.text(&format!("{goal} .goal-status")).await?,
        "Goal: at least 8 h 0 min; met on 1 of the 1 days with data in the last week."
    );
    c.find(Locator::Css(&format!("{goal} input[name=target]")))
        .await?
        .clear()
        .await?;
    c.find(Locator::Css(&format!("{goal} button")))
        .await?
        .click()
        .await?;
    // Cleared: the page that comes back has no goal (waiting for the old page to go).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !c
        .find_all(Locator::Css(&format!("{goal} .goal-status")))
        .await?
        .is_empty()
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the goal was not cleared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.current_url().await?.path(), "/console");

    // Japanese, kept in a cookie for the next page.
    c.goto(&format!("{base}/console?lang=ja")).await?;
    c.goto(&format!("{base}/console")).await?;
    let heading = browser.text("#sleep-h").await?;
    assert_eq!(heading, "昨夜の睡眠");
    let html_lang = c.find(Locator::Css("html")).await?.attr("lang").await?;
    assert_eq!(html_lang.as_deref(), Some("ja"));

    // Withdraw care consent with the button of that row.
    let row = "tr[data-purpose=care][data-grantee=care-team]";
    c.find(Locator::Css(&format!("{row} button")))
        .await?
        .click()
        .await?;
    c.wait()
        .for_element(Locator::Css(&format!("{row} form input[value=grant]")))
        .await?;
    assert_eq!(c.current_url().await?.path(), "/console");
    assert!(
        browser.text(row).await?.contains("撤回済み"),
        "shown as withdrawn"
    );
    common::eventually(Duration::from_secs(10), || {
        Ok((care_reads(api)? == 403).then_some(()))
    })?;
    // The care view has lost the citizen as well.
    common::eventually(Duration::from_secs(10), || {
        Ok((!care_page_lists_the_citizen(api, &care)?).then_some(()))
    })?;

    // And gives it again, choosing the care service from the hub's list.
    c.find(Locator::Css("form.grant-care button"))
        .await?
        .click()
        .await?;
    c.wait()
        .for_element(Locator::Css(&format!("{row} form input[value=revoke]")))
        .await?;
    assert!(browser.text(row).await?.contains("有効"), "in force again");
    common::eventually(Duration::from_secs(10), || {
        Ok((care_reads(api)? == 200).then_some(()))
    })?;
    let (_, records) = common::http(
        api,
        "GET",
        "/api/v1/consents?citizen=citizen-001",
        Some("operator-1"),
        None,
    )?;
    let last = records
        .as_array()
        .and_then(|r| r.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["change"], "grant", "{last}");
    assert_eq!(
        last["data_types"],
        serde_json::json!(["heart_rate"]),
        "the scope given back"
    );
    browser.close().await?;
    hub.terminate()
}

/// A care service, an oximeter of citizen-001 whose id holds `<script>`, and bed-002 of
/// citizen-002; an alert for SpO2 below 90 % for 2 minutes.
fn care_config() -> String {
    let mut text = String::from("[ingest]\nbatch_linger_ms = 2\n\n");
    for (id, citizen) in [("<script>x", "citizen-001"), ("bed-002", "citizen-002")] {
        text.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nkind = \"oximeter\"\ncitizen = \"{citizen}\"\npassword_hash = \"{}\"\n\n",
            common::password_hash(id)
        ));
    }
    text.push_str(&common::principal("care-team", &["care"]));
    text.push_str(
        "[[alerts]]\nname = \"low-spo2\"\nmetric = \"spo2\"\nbelow = 90.0\nfor_min = 2\n\n",
    );
    text.push_str("[http]\nlisten = \"127.0.0.1:0\"\n");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_care_service_sees_and_acknowledges_the_alert_of_its_consented_citizen_only(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &care_config())?;
    let api = hub.http_addr.expect("http listener");
    common::care_consent(dir.path(), "grant", "citizen-001", "care-team")?;
    let browser = Browser::start().await?;
    let base = format!("http://{api}");
    let c = &browser.client;
    browser.sign_in(&base, "care-team").await?;
    c.goto(&format!("{base}/console?lang=en")).await?;
    assert!(browser.text("#alerts").await?.contains("No open alerts."));

    // The desaturations come while the page is open: it shows the alert by itself (the live
    // view reloads it), without anyone reloading.
    publish(&hub, "bed-002", desaturation("bed-002", 4, 84.0)).await?;
    publish(&hub, "<script>x", desaturation("<script>x", 4, 85.0)).await?;
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#alerts tr[data-alert]"))
        .await?;
    let rows = c.find_all(Locator::Css("#alerts tr[data-alert]")).await?;
    assert_eq!(rows.len(), 1, "one alert, of the consented citizen");
    let row = rows[0].text().await?;
    assert!(
        row.contains("citizen-001") && row.contains("low-spo2"),
        "{row}"
    );
    assert!(row.contains("85 %"), "{row}");
    assert!(row.contains("<script>x"), "the device id as text: {row}");
    let mut scripts = Vec::new();
    for script in c.find_all(Locator::Css("script")).await? {
        scripts.push(script.attr("src").await?.unwrap_or_default());
    }
    assert_eq!(
        scripts,
        vec!["/console/live.js".to_owned()],
        "no script element but the console's own"
    );
    let cared: Vec<String> = {
        let mut ids = Vec::new();
        for r in c
            .find_all(Locator::Css("#citizens tr[data-citizen]"))
            .await?
        {
            ids.push(r.attr("data-citizen").await?.unwrap_or_default());
        }
        ids
    };
    assert_eq!(
        cared,
        vec!["citizen-001".to_owned()],
        "only the consented citizen"
    );
    assert_eq!(
        browser
            .text("#citizens td[data-metric=spo2]")
            .await?
            .lines()
            .next(),
        Some("85 %")
    );

    c.find(Locator::Css("#alerts tr[data-alert] button"))
        .await?
        .click()
        .await?;
    c.wait().for_element(Locator::Css("#alerts-h")).await?;
    assert!(c
        .find_all(Locator::Css("#alerts tr[data-alert]"))
        .await?
        .is_empty());
    assert!(browser.text("#alerts").await?.contains("No open alerts."));
    let (_, all) = common::http(
        api,
        "GET",
        "/api/v1/alerts?state=all",
        Some("care-team"),
        None,
    )?;
    assert_eq!(all[0]["acknowledged_by"], "care-team", "{all}");
    browser.close().await?;
    hub.terminate()
}

/// Reloads `/console` until `ready` holds of the browser's page, for up to 30 s.
async fn reload_until(
    browser: &Browser,
    url: &str,
    what: &str,
    ready: impl AsyncFn(&Browser) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        browser.client.goto(url).await?;
        if ready(browser).await? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let main = browser.text("main").await.unwrap_or_default();
            anyhow::bail!("{what} within 30 s; the page says:\n{main}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Opens bed-001's live tail from the devices table and waits for readings to arrive.
async fn c_tail(browser: &Browser, base: &str) -> anyhow::Result<()> {
    let c = &browser.client;
    c.goto(&format!("{base}/console?lang=en")).await?;
    c.find(Locator::Css("#devices tr[data-device=bed-001] a"))
        .await?
        .click()
        .await?;
    c.wait().for_element(Locator::Css("#tail table")).await?;
    let opened = c.current_url().await?;
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#tail tbody tr"))
        .await?;
    assert_eq!(
        c.current_url().await?,
        opened,
        "no navigation: the rows came live"
    );
    let row = browser.text("#tail tbody tr").await?;
    assert!(
        [
            "heart_rate",
            "respiratory_rate",
            "bed_occupancy",
            "sleep_stage",
            "body_movement"
        ]
        .iter()
        .any(|m| row.contains(m)),
        "a bed reading: {row}"
    );
    Ok(())
}

async fn online(browser: &Browser, device: &str) -> anyhow::Result<Option<String>> {
    let css = format!("#devices tr[data-device={device}]");
    Ok(browser
        .client
        .find(Locator::Css(&css))
        .await?
        .attr("data-online")
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_a_device_go_offline_and_replays_a_dead_letter() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let app = common::principal("app-citizen-002", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-002\"\npassword_hash");
    let config = format!(
        "{}{app}[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_for_simulation(2)
    );
    let hub = Hub::start(dir.path(), &config)?;
    let api = hub.http_addr.expect("http listener");
    let passwords = common::password_file(dir.path(), 1)?;
    let mut simulator = Command::new(common::KENKO)
        .args(["simulate", "--broker", &hub.addr.to_string()])
        .args(["--passwords", &path(&passwords)])
        .args(["--kinds", "bed", "--devices", "1", "--rate", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    hub.publish_as("bed-002", "{oops")?;

    let browser = Browser::start().await?;
    let base = format!("http://{api}");
    let page = format!("{base}/console?lang=en");
    browser.sign_in(&base, "operator-1").await?;
    reload_until(&browser, &page, "bed-001 online", async |b| {
        Ok(online(b, "bed-001").await?.as_deref() == Some("true"))
    })
    .await?;
    // The live tail of bed-001: readings arrive on the open page, no reload.
    c_tail(&browser, &base).await?;

    assert_eq!(online(&browser, "bed-002").await?.as_deref(), Some("false"));
    let letter = browser.text("#deadletters tr[data-letter]").await?;
    assert!(
        letter.contains("bed-002") && letter.contains("malformed_payload"),
        "{letter}"
    );
    let c = &browser.client;
    let errors = c
        .find(Locator::Css(
            "#devices tr[data-device=bed-002] td[data-errors]",
        ))
        .await?
        .attr("data-errors")
        .await?;
    assert_eq!(
        errors.as_deref(),
        Some("1"),
        "bed-002's dead letter is counted"
    );

    // Show the letter: what was sent, so the operator can tell what to fix.
    c.find(Locator::Css("#deadletters tr[data-letter] a"))
        .await?
        .click()
        .await?;
    c.wait()
        .for_element(Locator::Css("#letter pre[data-payload]"))
        .await?;
    assert_eq!(browser.text("#letter pre[data-payload]").await?, "{oops");

    // Replay the letter: the writer runs it again and it is refused again (still malformed).
    c.find(Locator::Css("#deadletters tr[data-letter] button"))
        .await?
        .click()
        .await?;
    c.wait().for_element(Locator::Css("p[data-replay]")).await?;
    // Reloaded without the #deadletters fragment (a fragment alone does not reload).
    let request = c
        .find(Locator::Css("p[data-replay]"))
        .await?
        .attr("data-replay")
        .await?
        .unwrap_or_default();
    let replayed = format!("{page}&replay={request}");
    reload_until(&browser, &replayed, "the replay carried out", async |b| {
        Ok(b.text("p[data-replay]").await?.contains("refused again 1"))
    })
    .await?;

    // The explain form, as `kenko acl explain`.
    c.goto(&page).await?;
    c.find(Locator::Css("#principal"))
        .await?
        .send_keys("bed-001")
        .await?;
    c.find(Locator::Css("#topic"))
        .await?
        .send_keys("devices/bed-002/telemetry")
        .await?;
    c.find(Locator::Css("#explain button"))
        .await?
        .click()
        .await?;
    c.wait()
        .for_element(Locator::Css("#explain p[data-allowed]"))
        .await?;
    assert_eq!(
        c.find(Locator::Css("#explain p[data-allowed]"))
            .await?
            .attr("data-allowed")
            .await?
            .as_deref(),
        Some("false"),
        "a device may not publish as another"
    );

    // The simulator stops: its device goes offline.
    simulator.kill()?;
    simulator.wait()?;
    reload_until(&browser, &page, "bed-001 offline", async |b| {
        Ok(online(b, "bed-001").await?.as_deref() == Some("false"))
    })
    .await?;

    // Opening bed-002's dead letter read citizen-002's data: their page says who did.
    let app = session(api, "app-citizen-002")?;
    let (_, _, own) = http_request(api, "GET", "/console?lang=en", &[("Cookie", &app)], "")?;
    let reads = own.split("id=\"reads\"").nth(1).unwrap_or_default();
    assert!(
        reads.contains("operator-1") && reads.contains("dead letter"),
        "the operator's look at the letter is listed: {reads}"
    );
    browser.close().await?;
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_analyst_downloads_the_csv_that_kenko_query_prints() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "{}{}[http]\nlisten = \"127.0.0.1:0\"\n",
        common::config_with_devices(2),
        common::principal("analyst-1", &["analyst"])
    );
    common::consent(
        &dir.path().join("data"),
        "grant",
        &["citizen-001", "citizen-002"],
        "research",
    )?;
    let hub = Hub::start(dir.path(), &config)?;
    let api = hub.http_addr.expect("http listener");
    // Two citizens' heart rate, every 20 minutes over the last 6 hours.
    let now = common::now_ms();
    for (device, base) in [("bed-001", 60), ("bed-002", 70)] {
        for i in 1..=18 {
            let t = now - i * 20 * 60_000;
            hub.publish_as(device, &format!(r#"{{"ts":{t},"hr":{}}}"#, base + i % 5))?;
        }
    }
    common::eventually(Duration::from_secs(30), || {
        let rows = hub.query(&[
            "--store",
            "shared",
            "--metric",
            "heart_rate",
            "--from",
            "-1d",
        ])?;
        Ok((rows.len() == 36).then_some(()))
    })?;

    let browser = Browser::start().await?;
    let base = format!("http://{api}");
    let c = &browser.client;
    browser.sign_in(&base, "analyst-1").await?;
    c.goto(&format!(
        "{base}/console?lang=en&metric=heart_rate&agg=median&every=1h&from=-1d"
    ))
    .await?;
    assert!(
        c.find(Locator::Css("#across svg polyline")).await.is_ok(),
        "a chart"
    );
    let href = c
        .find(Locator::Css("a#csv"))
        .await?
        .attr("href")
        .await?
        .unwrap_or_default();
    let cookie = c.get_named_cookie("kenko_session").await?;
    let cookie = format!("kenko_session={}", cookie.value());
    let (status, _, csv) = http_request(api, "GET", &href, &[("Cookie", &cookie)], "")?;
    assert_eq!(status, 200, "{csv}");
    let printed = common::cli::kenko(
        &[
            "query",
            "--data-dir",
            &path(&hub.data_dir),
            "--store",
            "shared",
            "--metric",
            "heart_rate",
            "--across",
            "--every",
            "1h",
            "--agg",
            "median",
            "--from",
            "-1d",
            "--format",
            "csv",
        ],
        None,
    )?;
    assert!(printed.status.success(), "{}", text(&printed));
    let printed = String::from_utf8_lossy(&printed.stdout).into_owned();
    assert!(printed.lines().count() > 5, "{printed}");
    assert_eq!(csv, printed, "the page's CSV is what kenko query prints");
    browser.close().await?;
    hub.terminate()
}
