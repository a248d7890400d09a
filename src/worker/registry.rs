//! A worker following its hub's registry (`[registry]`): the hub's consent records and
//! devices are copied into the worker's own `registry.db` as the hub serves them
//! (`/api/v1/registry/…`, waiting for changes), so that every worker decides, routes and
//! erases with one registry, and a restarted worker starts from its last copy when the hub
//! is out of reach. The pipeline reads the copy as it reads any registry.db.
//!
//! A copy that cannot go on (the worker's records disagree with the hub's, a record it
//! cannot keep) stops the worker: deciding with consents that no longer follow the hub
//! would apply withdrawn consents.

mod hub;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kenko_api::registry_feed::FeedDevice;
use kenko_config::Config;
use kenko_devices::registry::{DeviceStore, NewDevice};
use kenko_ingest::backoff::Backoff;
use kenko_ingest::consent::{Consent, ConsentRegistry, MirrorError};
use tokio_util::sync::CancellationToken;

pub use hub::Hub;
use hub::HubError;

/// The file in the data directory that names the hub whose registry this worker holds a
/// complete copy of (written after the first one).
const COPIED: &str = "registry-copied-from";

/// Why copying failed: for now (the hub out of reach, the disk busy), or for good.
#[derive(Debug)]
enum Failure {
    Again(anyhow::Error),
    ForGood(anyhow::Error),
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Failure {
        if e.is_for_good() {
            Failure::ForGood(e.into())
        } else {
            Failure::Again(e.into())
        }
    }
}

impl From<MirrorError> for Failure {
    fn from(e: MirrorError) -> Failure {
        if e.is_for_good() {
            Failure::ForGood(e.into())
        } else {
            Failure::Again(e.into())
        }
    }
}

impl From<anyhow::Error> for Failure {
    /// Local trouble (a store that cannot be opened, a thread that failed): tried again.
    fn from(e: anyhow::Error) -> Failure {
        Failure::Again(e)
    }
}

impl From<tokio::task::JoinError> for Failure {
    fn from(e: tokio::task::JoinError) -> Failure {
        Failure::Again(e.into())
    }
}

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).with_jitter()
}

/// Copies the hub's registry into the worker's `registry.db` and keeps the copy current.
pub struct Follower {
    hub: Arc<Hub>,
    registry_path: PathBuf,
    copied_path: PathBuf,
    config: Arc<Config>,
}

impl Follower {
    pub fn new(hub: Hub, data_dir: &Path, config: &Config) -> Follower {
        Follower {
            hub: Arc::new(hub),
            registry_path: data_dir.join("registry.db"),
            copied_path: data_dir.join(COPIED),
            config: Arc::new(config.clone()),
        }
    }

    /// Whether this data directory holds a complete copy of this hub's registry.
    fn holds_a_copy(&self) -> bool {
        std::fs::read_to_string(&self.copied_path).is_ok_and(|text| text.trim() == self.hub.url())
    }

    /// Takes a complete copy before the worker takes telemetry. A worker that holds a copy
    /// of this hub's registry goes on with it when the hub does not answer; one that does
    /// not waits for the hub (telemetry decided without the registry would be refused as
    /// from unknown devices, or without consent). `false` if stopped first; an error when
    /// the copy cannot be made at all.
    pub async fn first_copy(&self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let mut backoff = backoff();
        loop {
            let copied = tokio::select! {
                copied = self.copy_once() => copied,
                _ = shutdown.cancelled() => return Ok(false),
            };
            match copied {
                Ok(()) => {
                    std::fs::write(&self.copied_path, format!("{}\n", self.hub.url()))
                        .with_context(|| format!("cannot write {}", self.copied_path.display()))?;
                    return Ok(true);
                }
                Err(Failure::ForGood(e)) => return Err(e.context("registry")),
                Err(Failure::Again(e)) if self.holds_a_copy() => {
                    eprintln!(
                        "kenko worker: registry: {e:#}; going on with the copy this worker holds and trying again in the background"
                    );
                    return Ok(true);
                }
                Err(Failure::Again(e)) => eprintln!(
                    "kenko worker: registry: {e:#}; waiting for the hub's registry before taking telemetry"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.take_wait()) => {}
                _ = shutdown.cancelled() => return Ok(false),
            }
        }
    }

    /// Every consent record and the device list, without waiting for changes.
    async fn copy_once(&self) -> Result<(), Failure> {
        while self.next_consents(0).await? {}
        if let Some((feed, _)) = self.hub.devices(None, 0).await? {
            self.take_devices(feed.devices).await?;
        }
        Ok(())
    }

    /// Follows the hub until `shutdown`: consent records and devices each as soon as the
    /// hub has them. A copy that cannot go on stops the worker (cancels `shutdown`) and
    /// is the task's error.
    pub fn follow(
        self,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let this = Arc::new(self);
        tokio::spawn(async move {
            let consents = this.keep_following("consent records", &shutdown, |f| async move {
                f.next_consents(f.hub.wait_s).await.map(drop)
            });
            let result = tokio::try_join!(consents, this.clone().follow_devices(&shutdown));
            if let Err(e) = &result {
                eprintln!("kenko worker: registry: {e:#}; the worker stops rather than decide with consents that no longer follow the hub's");
                shutdown.cancel();
            }
            result.map(drop)
        })
    }

    async fn follow_devices(self: Arc<Self>, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let etag = Arc::new(tokio::sync::Mutex::new(None::<String>));
        self.keep_following("devices", shutdown, move |f| {
            let etag = etag.clone();
            async move {
                let mut held = etag.lock().await;
                let wait_s = f.hub.wait_s;
                if let Some((feed, tag)) = f.hub.devices(held.as_deref(), wait_s).await? {
                    f.take_devices(feed.devices).await?;
                    if tag.is_none() {
                        // Without a tag (a proxy dropped it) the hub cannot wait for a
                        // change: ask once per wait instead.
                        tokio::time::sleep(Duration::from_secs(wait_s)).await;
                    }
                    *held = tag;
                }
                Ok(())
            }
        })
        .await
    }

    /// Runs `step` until `shutdown`, backing off while it fails for now (each run of such
    /// failures said when it starts and when it ends); a failure for good is the error.
    async fn keep_following<F, Fut>(
        self: &Arc<Self>,
        what: &str,
        shutdown: &CancellationToken,
        step: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(Arc<Follower>) -> Fut,
        Fut: std::future::Future<Output = Result<(), Failure>>,
    {
        let mut backoff = backoff();
        loop {
            let result = tokio::select! {
                result = step(self.clone()) => result,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let wait = match result {
                Ok(()) => {
                    if backoff.failing() {
                        eprintln!("kenko worker: registry: following the hub's {what} again");
                    }
                    backoff = self::backoff();
                    continue;
                }
                Err(Failure::ForGood(e)) => return Err(e.context(format!("copying {what}"))),
                Err(Failure::Again(e)) => {
                    if backoff.failed() {
                        eprintln!("kenko worker: registry: {what}: {e:#}; the copy in force stays, trying again");
                    }
                    backoff.take_wait()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Asks for the records after the newest held (waiting up to `wait_s`) and adds them;
    /// `true` if the hub has more.
    async fn next_consents(&self, wait_s: u64) -> Result<bool, Failure> {
        let path = self.registry_path.clone();
        let after = tokio::task::spawn_blocking(move || ConsentRegistry::open(&path)?.last_id())
            .await?
            .map_err(anyhow::Error::from)?;
        let feed = self.hub.consents(after, wait_s).await?;
        let records = feed
            .records
            .into_iter()
            .map(Consent::try_from)
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| Failure::ForGood(anyhow::anyhow!("the hub sent {e}")))?;
        let newest = records.last().map_or(after, |r| r.id);
        let (path, hub) = (self.registry_path.clone(), self.hub.url().to_owned());
        let added = tokio::task::spawn_blocking(move || {
            ConsentRegistry::open(&path)
                .map_err(MirrorError::from)?
                .mirror(&records, &hub, crate::clock::now_ms())
        })
        .await??;
        if added > 0 {
            tracing::info!(added, newest, "consent records copied from the hub");
        }
        Ok(newest < feed.last_id)
    }

    /// Makes the worker's device table the hub's list; says what it cannot take.
    async fn take_devices(&self, devices: Vec<FeedDevice>) -> Result<(), Failure> {
        let devices: Vec<NewDevice> = devices
            .into_iter()
            .map(|d| NewDevice {
                id: d.id,
                kind: d.kind,
                citizen: d.citizen,
                profile: Some(d.profile),
                timezone: d.timezone,
                gateway: d.gateway,
                password_hash: None,
            })
            .collect();
        let (path, config) = (self.registry_path.clone(), self.config.clone());
        let report = tokio::task::spawn_blocking(move || {
            DeviceStore::open(&path)?.mirror(&config, devices, crate::clock::now_ms())
        })
        .await?
        .map_err(anyhow::Error::from)?;
        for refused in &report.refused {
            eprintln!(
                "kenko worker: registry: a device of the hub is left out: {refused}; its telemetry is dead-lettered as from an unknown device until this worker can take it"
            );
        }
        if report.changed_anything() {
            tracing::info!(
                added = report.added,
                changed = report.changed,
                removed = report.removed,
                "devices copied from the hub"
            );
        }
        Ok(())
    }
}
