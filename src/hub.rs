//! Starting a whole hub (broker, ingest pipeline, stores) and stopping it in order: stop
//! accepting, let connections finish their in-flight work, drain the pipeline, close stores.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use kenko_broker::auth::Directory;
use kenko_broker::authz::Authorizer;
use kenko_broker::http::HttpApi;
use kenko_broker::{Broker, BrokerStats};
use kenko_config::Config;
use kenko_devices::Registry;
use kenko_ingest::pipeline::{self, IngestStats};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running hub.
pub struct Hub {
    pub mqtt_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub websocket_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub broker_stats: Arc<BrokerStats>,
    pub ingest_stats: Arc<IngestStats>,
    task: JoinHandle<()>,
}

impl Hub {
    /// Opens the stores in `data_dir`, binds the listener and starts serving until `shutdown`.
    pub async fn start(
        config: Config,
        data_dir: &Path,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Hub> {
        let registry = Registry::from_config(&config.devices);
        let broker = Broker::bind(&config).await?;
        reload_on_sighup(broker.authorizer(), shutdown.clone());
        let (ingest, pipeline) =
            pipeline::start(&config.ingest, registry, data_dir, Some(broker.notices()))
                .with_context(|| format!("cannot open the stores in {}", data_dir.display()))?;
        let mqtt_addr = broker.local_addr();
        let tls_addr = broker.tls_addr();
        let websocket_addr = broker.websocket_addr();
        let broker_stats = broker.stats();
        let http_addr = match config.http.listen {
            Some(addr) => {
                let listener = kenko_broker::http::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
                let local = listener.local_addr().unwrap_or(addr);
                let api = HttpApi::new(
                    Directory::from_config(&config)?,
                    ingest.consents().clone(),
                    data_dir,
                );
                tokio::spawn(kenko_broker::http::serve(listener, api, shutdown.clone()));
                Some(local)
            }
            None => None,
        };
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
            tracing::info!("hub stopped");
        });
        Ok(Hub {
            mqtt_addr,
            tls_addr,
            websocket_addr,
            http_addr,
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
