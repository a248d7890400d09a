//! A worker following its hub's registry (`[registry]`): the hub's consent records and
//! devices are copied into the worker's own `registry.db` as the hub serves them
//! (`/api/v1/registry/…`, waiting for changes), so that every worker decides, routes and
//! erases with one registry, and a restarted worker starts from its last copy when the hub
//! is out of reach. The pipeline reads the copy as it reads any registry.db.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kenko_api::registry_feed::{ConsentFeed, DeviceFeed, FeedDevice};
use kenko_config::registry::RegistryConfig;
use kenko_config::Config;
use kenko_devices::registry::{DeviceStore, NewDevice};
use kenko_ingest::backoff::Backoff;
use kenko_ingest::consent::{Consent, ConsentRegistry};
use reqwest::{header, StatusCode};
use tokio_util::sync::CancellationToken;

/// The file in the data directory that says this worker has a copy of a hub's registry
/// (the hub's address, written after the first complete copy).
const COPIED: &str = "registry-copied-from";

/// The hub's registry API, logged in as the worker's principal.
pub struct Hub {
    http: reqwest::Client,
    base: String,
    principal: String,
    password: String,
    wait_s: u64,
    /// The session cookie (`kenko_session=…`) of the current login.
    cookie: tokio::sync::Mutex<Option<String>>,
}

/// Why an exchange with the hub failed.
#[derive(Debug, thiserror::Error)]
enum HubError {
    #[error("cannot reach the hub: {0}")]
    Unreachable(String),
    #[error(
        "the hub refused {principal}'s login ({status}): check registry.principal and its password"
    )]
    Login {
        principal: String,
        status: StatusCode,
    },
    #[error("the hub answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("the hub's answer cannot be read: {0}")]
    Garbled(String),
}

impl Hub {
    /// Checks `config` (password, CA file) before anything is asked of the hub.
    pub fn new(config: &RegistryConfig) -> anyhow::Result<Hub> {
        let password = config
            .password()
            .map_err(anyhow::Error::msg)?
            .with_context(|| {
                format!(
                    "registry: no password for {}: set {} or registry.password_file",
                    config.principal, config.password_env
                )
            })?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(config.wait_s + 30));
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).with_context(|| format!("registry.ca {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
                format!("registry.ca {} holds no PEM certificate", ca.display())
            })?;
            anyhow::ensure!(
                !certs.is_empty(),
                "registry.ca {} holds no PEM certificate",
                ca.display()
            );
            http = http.tls_built_in_root_certs(false);
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Hub {
            http: http
                .build()
                .context("registry: cannot set up the HTTP client")?,
            base: config.base().to_owned(),
            principal: config.principal.clone(),
            password,
            wait_s: config.wait_s,
            cookie: tokio::sync::Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Logs in (`POST /api/v1/session`); gives the session cookie.
    async fn log_in(&self) -> Result<String, HubError> {
        let body = serde_json::json!({"id": self.principal, "password": self.password});
        let response = self
            .http
            .post(format!("{}/api/v1/session", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(HubError::Login {
                principal: self.principal.clone(),
                status: response.status(),
            });
        }
        response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|pair| pair.starts_with(kenko_api::session::COOKIE))
            .map(str::to_owned)
            .ok_or_else(|| HubError::Garbled("the login set no session cookie".into()))
    }

    /// `GET path` in the session (logging in first, and again once when the session has
    /// ended), with `If-None-Match: etag` when given.
    async fn get(&self, path: &str, etag: Option<&str>) -> Result<reqwest::Response, HubError> {
        for attempt in 0..2 {
            let mut cookie = self.cookie.lock().await;
            if cookie.is_none() {
                *cookie = Some(self.log_in().await?);
            }
            let mut request = self
                .http
                .get(format!("{}{path}", self.base))
                .header(header::COOKIE, cookie.clone().unwrap_or_default());
            drop(cookie);
            if let Some(etag) = etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            let response = request.send().await?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                *self.cookie.lock().await = None;
                continue;
            }
            return Ok(response);
        }
        unreachable!("the second attempt returns")
    }

    /// The consent records from `after` on, waiting up to `wait_s` for a newer one.
    async fn consents(&self, after: i64, wait_s: u64) -> Result<ConsentFeed, HubError> {
        let path = format!("/api/v1/registry/consents?after={after}&wait_s={wait_s}");
        let response = self.get(&path, None).await?;
        json(response).await
    }

    /// The hub's devices with their tag, or `None` when the list tagged `etag` is still
    /// current after waiting up to `wait_s`.
    async fn devices(
        &self,
        etag: Option<&str>,
        wait_s: u64,
    ) -> Result<Option<(DeviceFeed, Option<String>)>, HubError> {
        let path = format!("/api/v1/registry/devices?wait_s={wait_s}");
        let response = self.get(&path, etag).await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let tag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Some((json(response).await?, tag)))
    }
}

impl From<reqwest::Error> for HubError {
    /// What went wrong at the bottom (refused, timed out, a certificate not trusted), said
    /// once: each layer of the HTTP client repeats the layers below it.
    fn from(e: reqwest::Error) -> HubError {
        let mut root: &dyn std::error::Error = &e;
        while let Some(source) = root.source() {
            root = source;
        }
        let url = e.url().map_or_else(String::new, |u| format!("{u}: "));
        let what = if e.is_timeout() { "timed out" } else { "" };
        HubError::Unreachable(format!(
            "{url}{what}{}{root}",
            if what.is_empty() { "" } else { ": " }
        ))
    }
}

/// The body of a 200 answer, read as JSON.
async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, HubError> {
    let status = response.status();
    let bytes = response.bytes().await?;
    if status != StatusCode::OK {
        let body = String::from_utf8_lossy(&bytes[..bytes.len().min(1000)]).into_owned();
        return Err(HubError::Refused { status, body });
    }
    serde_json::from_slice(&bytes).map_err(|e| HubError::Garbled(e.to_string()))
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

    /// Takes a complete copy before the worker takes telemetry. A worker that has copied
    /// this hub's registry before goes on with that copy when the hub does not answer; one
    /// that never has waits for the hub (telemetry decided without the registry would be
    /// refused as from unknown devices, or without consent). `false` if stopped first.
    pub async fn first_copy(&self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let before = std::fs::read_to_string(&self.copied_path).ok();
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match self.copy_once().await {
                Ok(()) => {
                    std::fs::write(&self.copied_path, format!("{}\n", self.hub.url()))
                        .with_context(|| format!("cannot write {}", self.copied_path.display()))?;
                    return Ok(true);
                }
                Err(e) if before.is_some() => {
                    eprintln!(
                        "kenko worker: registry: {e:#}; going on with the copy this worker holds and trying again in the background"
                    );
                    return Ok(true);
                }
                Err(e) => eprintln!(
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
    async fn copy_once(&self) -> anyhow::Result<()> {
        while self.next_consents(0).await? {}
        if let Some((feed, _)) = self.hub.devices(None, 0).await? {
            self.take_devices(feed.devices).await?;
        }
        Ok(())
    }

    /// Follows the hub until `shutdown`: consent records and devices each as soon as the
    /// hub has them.
    pub fn follow(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = Arc::new(self);
        let devices = this.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::join!(
                this.keep_following("consent records", &shutdown, |f| async move {
                    f.next_consents(f.hub.wait_s).await.map(drop)
                }),
                devices.follow_devices(&stop),
            );
        })
    }

    async fn follow_devices(self: Arc<Self>, shutdown: &CancellationToken) {
        let etag = Arc::new(tokio::sync::Mutex::new(None::<String>));
        self.keep_following("devices", shutdown, move |f| {
            let etag = etag.clone();
            async move {
                let mut held = etag.lock().await;
                if let Some((feed, tag)) = f.hub.devices(held.as_deref(), f.hub.wait_s).await? {
                    f.take_devices(feed.devices).await?;
                    *held = tag;
                }
                Ok(())
            }
        })
        .await;
    }

    /// Runs `step` until `shutdown`, backing off while it fails (each failure run said once
    /// when it starts, and its end said too).
    async fn keep_following<F, Fut>(
        self: &Arc<Self>,
        what: &str,
        shutdown: &CancellationToken,
        step: F,
    ) where
        F: Fn(Arc<Follower>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let mut backoff =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).with_jitter();
        loop {
            let wait = tokio::select! {
                result = step(self.clone()) => match result {
                    Ok(()) => {
                        if backoff.failing() {
                            eprintln!("kenko worker: registry: following the hub's {what} again");
                        }
                        backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).with_jitter();
                        continue;
                    }
                    Err(e) => {
                        if backoff.failed() {
                            eprintln!("kenko worker: registry: {what}: {e:#}; the copy in force stays, trying again");
                        }
                        backoff.take_wait()
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Asks for the records after the newest held (waiting up to `wait_s`) and adds them;
    /// `true` if the hub has more.
    async fn next_consents(&self, wait_s: u64) -> anyhow::Result<bool> {
        let path = self.registry_path.clone();
        let after =
            tokio::task::spawn_blocking(move || ConsentRegistry::open(&path)?.last_id()).await??;
        let feed = self.hub.consents(after, wait_s).await?;
        let records = feed
            .records
            .into_iter()
            .map(Consent::try_from)
            .collect::<Result<Vec<_>, String>>()
            .map_err(anyhow::Error::msg)?;
        let newest = records.last().map_or(after, |r| r.id);
        let (path, hub) = (self.registry_path.clone(), self.hub.url().to_owned());
        let added = tokio::task::spawn_blocking(move || {
            ConsentRegistry::open(&path)?
                .mirror(&records, &hub, crate::clock::now_ms())
                .map_err(anyhow::Error::from)
        })
        .await??;
        if added > 0 {
            tracing::info!(added, newest, "consent records copied from the hub");
        }
        Ok(newest < feed.last_id)
    }

    /// Makes the worker's device table the hub's list; says what it cannot take.
    async fn take_devices(&self, devices: Vec<FeedDevice>) -> anyhow::Result<()> {
        let devices: Vec<NewDevice> = devices
            .into_iter()
            .map(|d| NewDevice {
                id: d.id,
                kind: d.kind,
                citizen: d.citizen,
                profile: Some(d.profile),
                timezone: d.timezone,
                password_hash: None,
            })
            .collect();
        let (path, config) = (self.registry_path.clone(), self.config.clone());
        let report = tokio::task::spawn_blocking(move || {
            DeviceStore::open(&path)?.mirror(&config, devices, crate::clock::now_ms())
        })
        .await??;
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
