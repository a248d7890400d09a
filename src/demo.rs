//! `kenko demo`: a hub on embedded defaults with simulated devices of every kind, and people
//! of every role to look at their data over HTTP, for trying kenko.

mod people;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kenko_broker::auth::{hash_password, new_token, Cost};
use kenko_config::Config;
use kenko_config::{DeviceConfig, DeviceKind};
use kenko_sim::{self as sim, SimConfig, SimStats};
use tokio_util::sync::CancellationToken;

use crate::hub::{self, Hub};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its stores
    #[arg(long, default_value = "./kenko-data")]
    data_dir: PathBuf,
    /// MQTT listen address
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    mqtt: SocketAddr,
    /// HTTP API listen address (plain HTTP: keep it on loopback)
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Number of simulated devices of each kind (bed-001, wearable-001, ... of citizen-001, ...)
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Kinds of device to simulate, comma-separated
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bed,wearable,bp,scale,thermo,oximeter,glucose"
    )]
    kinds: Vec<DeviceKind>,
    /// Messages per second per simulated device
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.devices > 0, "--devices must be at least 1");
    anyhow::ensure!(!args.kinds.is_empty(), "--kinds needs at least one kind");
    let mut config = Config::default();
    config.mqtt.listen = args.mqtt;
    config.http.listen = Some(args.http);
    // Each device is registered with the payload profile its simulator speaks.
    config.devices = sim::fleet(&args.kinds, args.devices)
        .into_iter()
        .map(|d| DeviceConfig {
            id: d.id,
            kind: d.kind,
            citizen: d.citizen,
            profile: Some(d.profile.to_owned()),
            timezone: None,
            gateway: None,
            password_hash: None,
        })
        .collect();
    // Demo data is synthetic, so it can be watched live by anyone on this machine: anonymous
    // clients may subscribe to observations and device errors (rules in the data directory).
    config.ingest.live_republish = true;
    // The care service sees alerts of the citizens who consented to it (docs/alerts.md).
    config.alerts = vec![kenko_config::AlertConfig {
        name: "low-spo2".into(),
        metric: "spo2".into(),
        below: Some(90.0),
        above: None,
        silent_h: None,
        rising_by: None,
        over_days: None,
        for_min: 5,
    }];
    config.auth.anonymous = true;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    config.auth.acl = Some(demo_acl(&args.data_dir)?);
    // Each simulated device gets a fresh random token for this run, and so does each person.
    let mut passwords = HashMap::new();
    for device in &mut config.devices {
        let token = new_token();
        device.password_hash = Some(hash_password(&token, Cost::Token));
        passwords.insert(device.id.clone(), token);
    }
    let citizens = people::citizens(&config);
    let people_passwords = people::add_principals(&mut config, &citizens);
    people::record_consents(&args.data_dir, &people::consents(&citizens))?;
    let passwords_file = args.data_dir.join("demo-passwords.txt");
    write_passwords(&passwords_file, &passwords, &people_passwords)?;
    // The demo's configuration as a file, for `kenko acl explain --config` and `kenko serve`.
    let config_file = args.data_dir.join("demo.toml");
    let text = toml::to_string(&config).context("cannot write the demo configuration")?;
    std::fs::write(
        &config_file,
        format!("# The configuration of the last `kenko demo` run.\n{text}"),
    )
    .with_context(|| format!("cannot write {}", config_file.display()))?;

    let shutdown = hub::shutdown_on_signals();
    let hub_shutdown = CancellationToken::new();
    let hub = Hub::start(config, &args.data_dir, hub_shutdown.clone(), false).await?;
    let addr = hub.mqtt_addr;
    let mut everyone = passwords.clone();
    everyone.extend(people_passwords.iter().map(|(k, v)| (k.clone(), v.clone())));
    print_banner(&args, &hub, &everyone);

    let sim_stats = Arc::new(SimStats::default());
    let sim_cancel = shutdown.child_token();
    let sim_config = SimConfig {
        broker: addr.to_string(),
        devices: args.devices,
        kinds: args.kinds.clone(),
        rate_hz: args.rate,
        passwords: Some(Arc::new(passwords)),
        ..SimConfig::default()
    };
    let simulator = tokio::spawn(sim::run(sim_config, sim_stats.clone(), sim_cancel));

    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.tick().await;
    let mut last = (Instant::now(), 0u64, 0u64);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let received = hub.ingest_stats.received.load(Ordering::Relaxed);
                let stored = hub.ingest_stats.observations_stored.load(Ordering::Relaxed);
                let dead = hub.ingest_stats.dead_lettered.load(Ordering::Relaxed);
                let secs = last.0.elapsed().as_secs_f64().max(0.001);
                println!(
                    "clients {:>3} | messages in {:>8} ({:>6.1}/s) | observations stored {:>9} ({:>7.1}/s) | dead letters {}",
                    hub.broker_stats.connected.load(Ordering::Relaxed),
                    received,
                    (received - last.1) as f64 / secs,
                    stored,
                    (stored - last.2) as f64 / secs,
                    dead,
                );
                last = (Instant::now(), received, stored);
            }
        }
    }
    // The simulated devices stop first, so that what they sent is acknowledged before the hub
    // stops; then the hub shuts down in order.
    match simulator.await {
        Ok(Ok(report)) => println!(
            "simulator stopped: {} published, {} acknowledged",
            report.published, report.acked
        ),
        Ok(Err(e)) => eprintln!("kenko: simulator failed: {e}"),
        Err(e) => eprintln!("kenko: simulator task failed: {e}"),
    }
    hub_shutdown.cancel();
    hub.wait().await?;
    println!("hub stopped; data is in {}", args.data_dir.display());
    Ok(())
}

/// Rules of the demo hub: kenko's built-in rules, and anyone may watch the synthetic data.
/// Kept in the data directory so that it can be edited while the demo runs (it is reloaded).
fn demo_acl(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("acl.toml");
    if !path.exists() {
        let text = format!(
            "{}\n# The demo's data is synthetic: anyone on this machine may watch it.\n\n[[rule]]\neffect = \"allow\"\nrole = \"anonymous\"\naction = \"subscribe\"\ntopic = \"citizens/+/observations/+\"\n\n[[rule]]\neffect = \"allow\"\nrole = \"anonymous\"\naction = \"subscribe\"\ntopic = \"devices/+/errors\"\n",
            include_str!("../config/acl.default.toml")
        );
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// Writes `id password` lines, devices first, then people; readable by the owner only.
fn write_passwords(
    path: &Path,
    devices: &HashMap<String, String>,
    people: &HashMap<String, String>,
) -> anyhow::Result<()> {
    let mut text =
        String::from("# id password (this demo run's device tokens, then people's passwords)\n");
    for group in [devices, people] {
        let mut ids: Vec<&String> = group.keys().collect();
        ids.sort();
        for id in ids {
            text.push_str(&format!("{id} {}\n", group[id]));
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_banner(args: &DemoArgs, hub: &Hub, passwords: &HashMap<String, String>) {
    let dir = args.data_dir.display();
    let kinds: Vec<&str> = args.kinds.iter().map(|k| k.as_str()).collect();
    println!(
        "kenko demo: {} simulated devices of each kind ({}; bed-001, wearable-001, ...) for citizens citizen-001 ...",
        args.devices,
        kinds.join(", ")
    );
    println!("  Demo data is synthetic. Passwords of this run's devices and people: {dir}/demo-passwords.txt;");
    println!("  ACL rules: {dir}/acl.toml (edit it while the demo runs: it is reloaded); config: {dir}/demo.toml");
    println!("  MQTT broker:  {} (MQTT 3.1.1 and 5)", hub.mqtt_addr);
    if let Some(http) = hub.http_addr {
        println!("  HTTP API:     http://{http}/api/v1/ (HTTP Basic, ids and passwords as above)");
        println!("                its description: http://{http}/api/v1/docs; a browser signs in at http://{http}/login");
    }
    println!(
        "  people:       app-citizen-001 ... (each citizen's app), {} (care consent from the first half of the citizens),",
        people::CARE
    );
    println!(
        "                {} (the shared store: research consent from every second citizen), {}",
        people::ANALYST,
        people::OPERATOR
    );
    println!(
        "  data:         {dir}/personal.db (observations), {dir}/deadletter.db (refused messages)"
    );
    println!("Try, in another terminal:");
    print_cli_examples(args, hub, passwords);
    println!("Stop with Ctrl-C. Progress every 2 s:");
}

fn print_cli_examples(args: &DemoArgs, hub: &Hub, passwords: &HashMap<String, String>) {
    let dir = args.data_dir.display();
    let (host, port) = (hub.mqtt_addr.ip(), hub.mqtt_addr.port());
    let password = |id: &str| passwords.get(id).map_or("PASSWORD", String::as_str);
    println!(
        "  kenko query --data-dir {dir} --metric heart_rate --citizen citizen-001 --from -10m"
    );
    println!(
        "  kenko query --data-dir {dir} --metric heart_rate --every 1m --agg mean --format table"
    );
    if let Some(http) = hub.http_addr {
        println!(
            "  curl -u app-citizen-001:{} 'http://{http}/api/v1/observations?metric=heart_rate&from=-10m&format=csv'",
            password("app-citizen-001")
        );
        println!(
            "  curl -u {}:{} 'http://{http}/api/v1/observations?metric=spo2&every=1m&format=csv'",
            people::CARE,
            password(people::CARE)
        );
    }
    println!("  mosquitto_sub -h {host} -p {port} -t 'citizens/+/observations/heart_rate' -v");
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap_or(jiff::tz::TimeZone::UTC);
    let now = jiff::Zoned::now().with_time_zone(tokyo);
    println!(
        "  mosquitto_pub -h {host} -p {port} -i bed-001 -u bed-001 -P {} -q 1 -t devices/bed-001/telemetry -m '{{\"ts\":\"{}\",\"hr\":61,\"occ\":true}}'",
        password("bed-001"),
        now.strftime("%Y-%m-%dT%H:%M:%S%:z")
    );
    println!("  mosquitto_sub -h {host} -p {port} -t 'devices/+/errors' -v");
}
