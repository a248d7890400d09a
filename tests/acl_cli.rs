//! `kenko acl explain`, `kenko acl test` and `kenko hash-password`, run as an operator would.

mod common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

fn kenko(args: &[&str], dir: &std::path::Path) -> anyhow::Result<Output> {
    Ok(Command::new(common::KENKO)
        .args(args)
        .current_dir(dir)
        .output()?)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A config with bed-001 and an app for citizen-001, and a rule file with a deny rule.
fn setup(dir: &std::path::Path) -> anyhow::Result<()> {
    let app = common::principal("app-001", &["citizen"])
        .replace("password_hash", "citizen = \"citizen-001\"\npassword_hash");
    std::fs::write(
        dir.join("kenko.toml"),
        format!(
            "{}{app}[auth]\nacl = \"acl.toml\"\n",
            common::config_with_devices(1)
        ),
    )?;
    std::fs::write(
        dir.join("acl.toml"),
        format!(
            "[[rule]]\neffect = \"deny\"\nrole = \"citizen\"\naction = \"subscribe\"\ntopic = \"citizens/{{citizen}}/observations/sleep_stage\"\n\n{}",
            include_str!("../config/acl.default.toml")
        ),
    )?;
    Ok(())
}

#[test]
fn explain_names_the_rule_its_line_and_the_expanded_placeholders() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    let base = ["acl", "explain", "--config", "kenko.toml"];

    let out = kenko(
        &[
            &base[..],
            &[
                "--principal",
                "bed-001",
                "--publish",
                "devices/bed-001/telemetry",
            ],
        ]
        .concat(),
        dir.path(),
    )?;
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.starts_with("ALLOW: publish devices/bed-001/telemetry"),
        "{text}"
    );
    // The [[rule]] header above the telemetry rule in the file written by setup().
    let acl = std::fs::read_to_string(dir.path().join("acl.toml"))?;
    let lines: Vec<&str> = acl.lines().collect();
    let topic_line = lines
        .iter()
        .position(|l| l.starts_with("topic = \"devices/%c/telemetry\""))
        .expect("telemetry rule");
    let header = (0..topic_line)
        .rev()
        .find(|&i| lines[i] == "[[rule]]")
        .expect("header")
        + 1;
    assert!(
        text.contains(&format!("acl.toml:{header}:1")),
        "the deciding rule's line ({header}): {text}"
    );
    assert!(
        text.contains("devices/%c/telemetry -> devices/bed-001/telemetry"),
        "{text}"
    );

    let out = kenko(
        &[
            &base[..],
            &[
                "--principal",
                "app-001",
                "--subscribe",
                "citizens/citizen-001/observations/sleep_stage",
            ],
        ]
        .concat(),
        dir.path(),
    )?;
    let text = stdout(&out);
    assert!(text.starts_with("DENY"), "{text}");
    assert!(text.contains("acl.toml:1:1 deny subscribe"), "{text}");
    assert!(
        text.contains("-> citizens/citizen-001/observations/sleep_stage"),
        "{text}"
    );

    let out = kenko(
        &[
            &base[..],
            &[
                "--principal",
                "bed-001",
                "--publish",
                "devices/bed-001/telemetry",
                "--retain",
            ],
        ]
        .concat(),
        dir.path(),
    )?;
    assert!(
        stdout(&out).contains("forbids retained publishes"),
        "{}",
        stdout(&out)
    );

    let out = kenko(
        &[&base[..], &["--principal", "bed-001", "--subscribe", "#"]].concat(),
        dir.path(),
    )?;
    let text = stdout(&out);
    assert!(text.contains("none matched; the default is deny"), "{text}");
    assert!(
        text.contains("(for this principal: devices/bed-001/errors)"),
        "{text}"
    );

    let out = kenko(
        &[&base[..], &["--principal", "nobody", "--subscribe", "#"]].concat(),
        dir.path(),
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown principal \"nobody\""));
    Ok(())
}

#[test]
fn acl_test_passes_good_cases_and_fails_with_the_case_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    std::fs::write(
        dir.path().join("good.toml"),
        "[[case]]\nprincipal = \"bed-001\"\npublish = \"devices/bed-001/telemetry\"\nqos = 1\nexpect = \"allow\"\n\n[[case]]\nprincipal = \"bed-001\"\npublish = \"devices/bed-002/telemetry\"\nexpect = \"deny\"\n\n[[case]]\nprincipal = \"app-001\"\nsubscribe = \"citizens/citizen-001/observations/+\"\nexpect = \"allow\"\n",
    )?;
    let out = kenko(
        &["acl", "test", "--config", "kenko.toml", "good.toml"],
        dir.path(),
    )?;
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("3 cases, 3 passed, 0 failed"));

    std::fs::write(
        dir.path().join("bad.toml"),
        "[[case]]\nprincipal = \"bed-001\"\npublish = \"devices/bed-001/telemetry\"\nexpect = \"allow\"\n\n[[case]]\nprincipal = \"app-001\"\nsubscribe = \"citizens/citizen-001/observations/sleep_stage\"\nexpect = \"allow\"\n",
    )?;
    let out = kenko(
        &["acl", "test", "--config", "kenko.toml", "bad.toml"],
        dir.path(),
    )?;
    assert!(!out.status.success(), "a failing case fails the command");
    let text = stdout(&out);
    assert!(text.contains("FAIL bad.toml:6:1: expected ALLOW"), "{text}");
    assert!(text.contains("2 cases, 1 passed, 1 failed"), "{text}");

    // --rules tries a changed file before it goes live.
    std::fs::write(
        dir.path().join("new.toml"),
        include_str!("../config/acl.default.toml"),
    )?;
    let out = kenko(
        &[
            "acl",
            "test",
            "--config",
            "kenko.toml",
            "--rules",
            "new.toml",
            "bad.toml",
        ],
        dir.path(),
    )?;
    assert!(out.status.success(), "{}", stdout(&out));
    Ok(())
}

#[test]
fn hash_password_makes_a_hash_the_hub_accepts() -> anyhow::Result<()> {
    let mut child = Command::new(common::KENKO)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("stdin").write_all(b"s3cret\n")?;
    let out = child.wait_with_output()?;
    assert!(out.status.success());
    let hash = stdout(&out).trim().to_owned();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let text = format!("[[principals]]\nid = \"p\"\npassword_hash = \"{hash}\"\n");
    let config = kenko_config::Config::from_toml(&text, std::path::Path::new("k.toml"))?;
    let dir = kenko_broker::auth::Directory::from_config(&config)?;
    let p = dir.get("p").expect("principal");
    assert!(kenko_broker::auth::verify_password(&p, b"s3cret"));
    assert!(!kenko_broker::auth::verify_password(&p, b"s3cret\n"));
    Ok(())
}

/// A care service may subscribe to citizens' observations under the built-in rule, but each
/// delivery needs the citizen's care consent: explain evaluates it and names the record.
#[test]
fn explain_evaluates_the_consent_a_rule_needs_and_names_the_deciding_record() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    setup(dir.path())?;
    let config = std::fs::read_to_string(dir.path().join("kenko.toml"))?
        + &common::principal("st-luke", &["care"]);
    std::fs::write(dir.path().join("kenko.toml"), config)?;
    let data = dir.path().join("data");
    let data = data.to_str().expect("path");
    let explain = |filter: &str, at: &str| -> anyhow::Result<String> {
        let out = kenko(
            &[
                "acl",
                "explain",
                "--config",
                "kenko.toml",
                "--data-dir",
                data,
                "--principal",
                "st-luke",
                "--subscribe",
                filter,
                "--at",
                at,
            ],
            dir.path(),
        )?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout(&out))
    };
    let one = "citizens/citizen-001/observations/heart_rate";
    let all = "citizens/+/observations/heart_rate";

    // No registry yet: nothing is recorded, nothing delivered.
    let text = explain(one, "now")?;
    assert!(text.starts_with("ALLOW: subscribe"), "{text}");
    assert!(
        text.contains("no consent is recorded: nothing is delivered"),
        "{text}"
    );

    // A grant from an hour ago on, for heart rate.
    common::consent_with(
        std::path::Path::new(data),
        "grant",
        &["citizen-001"],
        "care",
        &[
            "--grantee",
            "st-luke",
            "--types",
            "heart_rate",
            "--from",
            "-1h",
        ],
    )?;
    let text = explain(one, "now")?;
    assert!(
        text.contains("needs citizen-001's care consent to st-luke for heart_rate"),
        "{text}"
    );
    assert!(text.contains(": in force: record #1 "), "{text}");
    assert!(text.contains("grants it for heart_rate"), "{text}");
    // An observation from before the grant's window is not delivered.
    let text = explain(one, "-2h")?;
    assert!(text.contains(": NOT in force: record #1 "), "{text}");
    assert!(text.contains("which does not hold"), "{text}");
    // Another data type has no record.
    let text = explain("citizens/citizen-001/observations/spo2", "now")?;
    assert!(
        text.contains("NOT in force: no care record of citizen-001 to st-luke names spo2"),
        "{text}"
    );
    let text = explain(all, "now")?;
    assert!(text.contains("in force for citizen-001 (#1)"), "{text}");

    // Withdrawn: the withdrawal decides.
    common::consent_with(
        std::path::Path::new(data),
        "revoke",
        &["citizen-001"],
        "care",
        &["--grantee", "st-luke", "--types", "heart_rate"],
    )?;
    let text = explain(one, "now")?;
    assert!(text.contains("NOT in force: record #2 "), "{text}");
    assert!(text.contains("withdraws it"), "{text}");
    let text = explain(all, "now")?;
    assert!(text.contains("in force for no citizen"), "{text}");
    Ok(())
}
