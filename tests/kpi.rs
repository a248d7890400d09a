//! `kenko kpi --month`: participation figures from the consent registry the CLI wrote, with
//! the k rule applied in every format.

mod common;

use std::process::Command;

fn kpi(data: &std::path::Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(common::KENKO)
        .arg("kpi")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()?)
}

#[test]
fn participation_of_this_month_is_counted_and_small_groups_suppressed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let citizens: Vec<String> = (1..=7).map(|n| format!("citizen-{n:03}")).collect();
    let all: Vec<&str> = citizens.iter().map(String::as_str).collect();
    common::consent(&data, "grant", &all, "collect")?;
    common::consent(&data, "grant", &all[..5], "research")?;
    for citizen in &all[..3] {
        common::consent_with(
            &data,
            "grant",
            &[citizen],
            "care",
            &["--grantee", "st-luke"],
        )?;
    }
    common::consent(&data, "revoke", &all[6..], "collect")?;
    // The month of now, in the default zone (Asia/Tokyo), as the consents were recorded.
    let month = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo")?)
        .strftime("%Y-%m")
        .to_string();

    let out = kpi(&data, &["--month", &month, "--format", "json"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let value = |kpi: &str| {
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["kpi"] == kpi)
            .map(|r| r["value"].clone())
            .unwrap_or_default()
    };
    assert_eq!(value("enrolled_citizens"), 6, "{rows}");
    assert_eq!(value("citizens_with_research_consent"), 5);
    assert_eq!(value("citizens_joined"), 7);
    // Three with care, one withdrawn: fewer than k = 5, so not shown in any format.
    assert_eq!(value("citizens_with_care_consent"), serde_json::Value::Null);
    assert_eq!(value("care_services_following"), serde_json::Value::Null);
    assert_eq!(value("citizens_withdrawn"), serde_json::Value::Null);
    let out = kpi(&data, &["--month", &month, "--format", "csv"])?;
    let csv = String::from_utf8(out.stdout)?;
    assert!(
        csv.contains(&format!("citizens_withdrawn,{month},,true")),
        "{csv}"
    );
    let out = kpi(&data, &["--month", &month])?;
    let table = String::from_utf8(out.stdout)?;
    assert!(table.contains("fewer than 5"), "{table}");
    assert!(
        !table.contains("citizen-00"),
        "no citizen is named: {table}"
    );
    // With k = 3 the care figures may be shown; the one withdrawal still may not.
    let out = kpi(&data, &["--month", &month, "--k", "3", "--format", "csv"])?;
    let csv = String::from_utf8(out.stdout)?;
    assert!(
        csv.contains(&format!("citizens_with_care_consent,{month},3,false")),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("care_services_following,{month},1,false")),
        "{csv}"
    );
    assert!(
        csv.contains(&format!("citizens_withdrawn,{month},,true")),
        "{csv}"
    );

    // Bad input is named.
    let out = kpi(&data, &["--month", "2026-13"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("give it as YYYY-MM"));
    let out = kpi(&data, &["--month", &month, "--k", "1"])?;
    assert!(!out.status.success());
    let out = kpi(&dir.path().join("nowhere"), &["--month", &month])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    Ok(())
}
