//! `kenko acl export`: the rules as a Mosquitto acl_file, enforced by a real Mosquitto, and as
//! an EMQX acl.conf; never more permissive than kenko.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::external::Mosquitto;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// bed-001, bed-002, a care service, and the built-in rules plus a watcher who may read
/// every device topic (to see what the broker lets through).
fn setup(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("kenko.toml"),
        format!(
            "{}{}{}[auth]\nacl = \"acl.toml\"\n",
            common::config_with_devices(2),
            common::principal("st-luke", &["care"]),
            common::principal("watcher", &["operator"]),
        ),
    )?;
    std::fs::write(
        dir.join("acl.toml"),
        format!(
            "[[rule]]\neffect = \"allow\"\nprincipal = \"watcher\"\naction = \"subscribe\"\ntopic = \"devices/#\"\n\n{}",
            include_str!("../config/acl.default.toml")
        ),
    )?;
    Ok(())
}

fn export(dir: &Path, format: &str) -> anyhow::Result<String> {
    let out = Command::new(common::KENKO)
        .args([
            "acl",
            "export",
            "--config",
            "kenko.toml",
            "--data-dir",
            "data",
        ])
        .args(["--format", format])
        .current_dir(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kenko acl export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn the_emqx_file_keeps_kenkos_order_and_leaves_consent_rules_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    let text = export(dir.path(), "emqx")?;
    let own = r#"{allow, {user, "bed-001"}, publish, ["devices/bed-001/telemetry"]}."#;
    let errors = r#"{allow, {user, "bed-001"}, subscribe, ["devices/bed-001/errors"]}."#;
    let own_at = text.find(own).expect("bed-001 publishes its telemetry");
    assert!(text[own_at..].contains(errors), "in rule order:\n{text}");
    assert!(
        !text.contains(r#"{user, "bed-001"}, publish, ["devices/bed-002"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"{allow, {user, "st-luke"}, subscribe, ["citizens/+/observations/+"]}"#),
        "consent rules are not exported as allows:\n{text}"
    );
    assert!(text.contains("%% st-luke: "), "{text}");
    assert!(text.trim_end().ends_with("{deny, all}."), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_enforces_the_exported_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    let text = export(dir.path(), "mosquitto")?;
    assert!(text.contains("user bed-001\n"), "{text}");
    assert!(
        text.contains("topic write devices/bed-001/telemetry\n"),
        "{text}"
    );
    assert!(
        !text.contains("citizens/+/observations/+\n"),
        "consent rule left out:\n{text}"
    );
    let acl = dir.path().join("mosquitto.acl");
    std::fs::write(&acl, &text)?;
    let broker = Mosquitto::start_with(
        &dir.path().join("mosquitto"),
        &format!("acl_file {}\n", acl.display()),
    )?;

    // The watcher sees what the broker lets through.
    let (watcher, mut watching) = client(&broker, "watcher");
    watcher.subscribe("devices/#", QoS::AtLeastOnce).await?;
    let seen = tokio::spawn(async move {
        let mut topics = Vec::new();
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Ok(event)) = tokio::time::timeout_at(until, watching.poll()).await {
            if let Event::Incoming(Packet::Publish(p)) = event {
                topics.push(p.topic);
            }
        }
        topics
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (bed, mut bed_events) = client(&broker, "bed-001");
    tokio::spawn(async move { while bed_events.poll().await.is_ok() {} });
    for topic in ["devices/bed-001/telemetry", "devices/bed-002/telemetry"] {
        bed.publish(topic, QoS::AtLeastOnce, false, "{}").await?;
    }
    let topics = seen.await?;
    assert_eq!(
        topics,
        ["devices/bed-001/telemetry"],
        "bed-001 publishes only its own telemetry"
    );
    Ok(())
}

fn client(broker: &Mosquitto, user: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(user, broker.addr.ip().to_string(), broker.addr.port());
    options.set_credentials(user, "unused");
    AsyncClient::new(options, 10)
}
