//! Starting a whole hub (broker, ingest pipeline, stores) and stopping it in order: stop
//! accepting, let connections finish their in-flight work, drain the pipeline, close stores.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use kenko_api::http::HttpApi;
use kenko_broker::auth::Directory;
use kenko_broker::authz::Authorizer;
use kenko_broker::{Broker, BrokerStats};
use kenko_config::Config;
use kenko_devices::registry::{Registry, RegistryWatcher};
use kenko_ingest::consent::{audit_head_path, ConsentRegistry};
use kenko_ingest::pipeline::{self, Settings};
use kenko_ingest::stats::IngestStats;
use kenko_ingest::wal::Recovery;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a running hub checks registry.db for added and removed devices.
const DEVICE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// A running hub.
pub struct Hub {
    pub mqtt_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub websocket_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub https_addr: Option<SocketAddr>,
    pub broker_stats: Arc<BrokerStats>,
    pub ingest_stats: Arc<IngestStats>,
    task: JoinHandle<()>,
}

impl Hub {
    /// Opens the stores in `data_dir`, binds the listener and starts serving until `shutdown`.
    /// `accept_data_loss`: start even when a store lacks records the write-ahead log no
    /// longer holds (recorded in the audit log).
    pub async fn start(
        config: Config,
        data_dir: &Path,
        shutdown: CancellationToken,
        accept_data_loss: bool,
    ) -> anyhow::Result<Hub> {
        anyhow::ensure!(
            config.store.embedded,
            "kenko serve needs its embedded store (its API, console and windows read it): store.embedded = false is for kenko worker"
        );
        let data = DataDir::open(&config, data_dir)?;
        kenko_broker::check_descriptor_budget(&config);
        let broker = Broker::bind(&config, data.registry.clone()).await?;
        reload_on_sighup(broker.authorizer(), shutdown.clone());
        let (ingest, pipeline) = data
            .start_pipeline(&config, accept_data_loss, Some(broker.notices()), "serve")
            .await?;
        let DataDir {
            lock,
            registry,
            watcher,
            ..
        } = data;
        let mqtt_addr = broker.local_addr();
        let tls_addr = broker.tls_addr();
        let websocket_addr = broker.websocket_addr();
        let broker_stats = broker.stats();
        let (mut http_addr, mut https_addr) = (None, None);
        if config.http.listen.is_some() || config.http.tls.is_some() {
            let api = HttpApi::new(
                Directory::with_devices(&config, registry.clone())?,
                ingest.consents().clone(),
                data_dir,
                broker.login_guard(),
            )
            .with_metrics(broker.stats(), ingest.stats().clone())
            .with_health(ingest.health().clone())
            .with_sink_lags(ingest.sink_lags().clone())
            .with_request_limits(&config.http)
            .with_config(&config)
            .with_authorizer(broker.authorizer())
            .with_connected_clients(broker.connected_clients())
            .with_live(ingest.live().clone());
            if let Some(addr) = config.http.listen {
                http_addr = Some(serve_http(addr, &api, &config.http, None, &shutdown).await?);
            }
            if let Some(tls) = &config.http.tls {
                let acceptor =
                    kenko_broker::tls::acceptor(tls).context("cannot set up HTTPS ([http.tls])")?;
                let addr =
                    serve_http(tls.listen, &api, &config.http, Some(acceptor), &shutdown).await?;
                https_addr = Some(addr);
            }
        }
        let ingest_stats = ingest.stats().clone();
        let task = tokio::spawn(async move {
            broker.run(ingest, shutdown).await;
            // Every connection, and with it every pipeline handle, is gone: the writer drains
            // what is queued, answers it and closes the stores.
            if tokio::task::spawn_blocking(move || pipeline.join())
                .await
                .is_err()
            {
                tracing::error!("ingest pipeline did not stop cleanly");
            }
            drop(watcher);
            drop(lock);
            tracing::info!("hub stopped");
        });
        Ok(Hub {
            mqtt_addr,
            tls_addr,
            websocket_addr,
            http_addr,
            https_addr,
            broker_stats,
            ingest_stats,
            task,
        })
    }

    /// Waits until the hub has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("hub task failed")
    }
}

/// A data directory held by this process, with its device registry kept current.
pub struct DataDir {
    pub path: std::path::PathBuf,
    pub lock: std::fs::File,
    pub registry: Registry,
    pub watcher: RegistryWatcher,
}

impl DataDir {
    /// Locks `data_dir`, checks registry.db's audit log and starts following its devices.
    pub fn open(config: &Config, data_dir: &Path) -> anyhow::Result<DataDir> {
        let lock = lock_data_dir(data_dir)?;
        let registry_path = data_dir.join("registry.db");
        verify_registry(&registry_path)?;
        // Configuration devices and those of registry.db (`kenko device add`), kept current
        // while the process runs; broker and pipeline share it.
        let registry = Registry::new(config);
        let watcher = RegistryWatcher::start(&registry_path, registry.clone(), DEVICE_POLL)
            .with_context(|| format!("cannot read the devices of {}", registry_path.display()))?;
        // A worker following a hub's registry gets its devices from the hub.
        if registry.is_empty() && config.registry.is_none() {
            tracing::warn!("no devices are registered (config file or `kenko device add`); telemetry is dead-lettered as unknown_device until one is added");
        }
        Ok(DataDir {
            path: data_dir.to_owned(),
            lock,
            registry,
            watcher,
        })
    }

    /// Opens the stores and the write-ahead log and starts the ingest pipeline; says what
    /// recovery found and whether InfluxDB answers (`command` names the command saying it).
    pub async fn start_pipeline(
        &self,
        config: &Config,
        accept_data_loss: bool,
        notices: Option<flume::Sender<pipeline::Notice>>,
        command: &str,
    ) -> anyhow::Result<(pipeline::IngestHandle, pipeline::Pipeline)> {
        let settings = Settings {
            accept_data_loss,
            ..Settings::try_from(config)?
        };
        let (ingest, pipeline) =
            pipeline::start(&settings, self.registry.clone(), &self.path, notices)
                .map_err(|e| start_error(e, &self.path))?;
        report_recovery(&pipeline.recovery);
        if let Some(influx) = &config.influxdb {
            check_influx(influx, command).await;
        }
        Ok((ingest, pipeline))
    }
}

/// Why the ingest pipeline did not start, for people: a store that cannot be opened, or what
/// else it was (a device of registry.db naming a zone this machine does not know; the
/// config's own zones are checked when it is read).
pub fn start_error(e: pipeline::IngestError, data_dir: &Path) -> anyhow::Error {
    match e {
        pipeline::IngestError::Zone(zone) => anyhow::Error::new(zone),
        other => anyhow::Error::new(other)
            .context(format!("cannot open the stores in {}", data_dir.display())),
    }
}

/// Binds `addr` and serves the HTTP API there until `shutdown`, over HTTPS with `tls`;
/// returns the address bound.
async fn serve_http(
    addr: SocketAddr,
    api: &HttpApi,
    limits: &kenko_config::HttpConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
    let listener = kenko_api::http::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {scheme} on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    let (api, limits, shutdown) = (api.clone(), limits.clone(), shutdown.clone());
    tokio::spawn(async move {
        kenko_api::http::serve(listener, api, &limits, tls, shutdown).await;
    });
    Ok(local)
}

/// Holds the data directory for this process: two hubs (or a hub and a local dead-letter
/// replay) must never write one write-ahead log. The lock goes with the process, also when
/// it is killed.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let path = data_dir.join("kenko.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another kenko process (a hub, or a dead-letter replay) is using {}; stop it first or use another --data-dir",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Refuses a registry whose audit log lost entries (truncated, replaced by an older copy):
/// its consents would be missing too, and the hub would refuse or route telemetry by them.
fn verify_registry(registry_path: &Path) -> anyhow::Result<()> {
    let registry = ConsentRegistry::open(registry_path)
        .with_context(|| format!("cannot open {}", registry_path.display()))?;
    if let Err(e) = registry.verify_audit() {
        let head_path = audit_head_path(registry_path);
        // The checkpoint says how far the log reached, also when the file is too damaged for
        // the log to be read at all.
        let expected = std::fs::read_to_string(&head_path)
            .ok()
            .and_then(|text| text.split_whitespace().next().map(str::to_owned))
            .map_or_else(String::new, |seq| {
                format!(
                    " ({} says the log reaches entry {seq})",
                    head_path.display()
                )
            });
        anyhow::bail!(
            "{} fails its audit check: {e}{expected}; its consents and audit entries may be lost, so the hub does not start: restore {} and {} from a backup (`kenko audit verify` checks a copy)",
            registry_path.display(),
            registry_path.display(),
            head_path.display()
        );
    }
    Ok(())
}

/// Says what opening the write-ahead log found, when it found anything.
fn report_recovery(recovery: &Recovery) {
    if recovery.torn_bytes > 0 {
        eprintln!(
            "kenko: write-ahead log: cut {} bytes of a torn last write (a crash mid-write; nothing acknowledged is lost)",
            recovery.torn_bytes
        );
    }
    for segment in &recovery.quarantined {
        eprintln!(
            "kenko: write-ahead log: damaged segment set aside as {}; the rest is replayed",
            segment.display()
        );
    }
}

/// Tells whether the InfluxDB server answers; the hub runs either way (the log holds what
/// the server has not taken yet).
async fn check_influx(influx: &kenko_config::InfluxConfig, command: &str) {
    let result = match kenko_ingest::influx::client(influx) {
        Ok(client) => kenko_ingest::influx::check(&client, std::time::Duration::from_secs(5)).await,
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => println!("kenko {command}: InfluxDB at {} is ready", influx.url),
        Err(why) => eprintln!(
            "kenko {command}: cannot reach InfluxDB at {} ({why}); observations wait in the write-ahead log until it answers",
            influx.url
        ),
    }
}

/// Reloads the ACL file on SIGHUP until `shutdown`; a broken file is refused (and logged with
/// its file, line and column) and the rules in force stay.
fn reload_on_sighup(authorizer: Arc<Authorizer>, shutdown: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; the ACL file is still watched for changes");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup.recv() => {}
            }
            let authorizer = authorizer.clone();
            match tokio::task::spawn_blocking(move || authorizer.reload()).await {
                Ok(Ok(n)) => eprintln!("kenko: SIGHUP: {n} ACL rules in force"),
                Ok(Err(e)) => {
                    eprintln!("kenko: SIGHUP: ACL file refused, previous rules stay: {e}")
                }
                Err(_) => {}
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (authorizer, shutdown);
}

/// A token cancelled on SIGINT (Ctrl-C) or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("kenko: shutting down (finishing in-flight messages)");
        cancel.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
