//! The hub's registry API as a worker calls it: one session (`POST /api/v1/session`) for
//! both requests, logged in again when the hub has ended it; answers sorted into what
//! asking again may mend and what it cannot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use kenko_api::registry_feed::{ConsentFeed, DeviceFeed};
use kenko_config::registry::RegistryConfig;
use reqwest::{header, StatusCode};

/// The clock difference to the hub beyond which the worker warns: consent records take
/// force by the hub's clock, decisions are made by the worker's.
const SKEW_WARN: Duration = Duration::from_secs(2);

/// The hub's registry API, logged in as the worker's principal.
pub struct Hub {
    http: reqwest::Client,
    base: String,
    principal: String,
    password: String,
    pub wait_s: u64,
    /// The session cookie (`kenko_session=…`) of the current login.
    cookie: tokio::sync::Mutex<Option<String>>,
    skew_told: AtomicBool,
}

/// Why an exchange with the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot reach the hub: {0}")]
    Unreachable(String),
    #[error("the hub refused {principal}'s login: {why}")]
    Login { principal: String, why: String },
    #[error("the hub answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("the hub's answer cannot be read: {0}")]
    Garbled(String),
}

impl HubError {
    /// Whether asking again cannot help: the hub says the copies disagree (409), or speaks
    /// a language this worker does not read.
    pub fn is_for_good(&self) -> bool {
        match self {
            HubError::Refused { status, .. } => *status == StatusCode::CONFLICT,
            HubError::Garbled(_) => true,
            HubError::Unreachable(_) | HubError::Login { .. } => false,
        }
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
        let timed_out = if e.is_timeout() { "timed out: " } else { "" };
        HubError::Unreachable(format!("{url}{timed_out}{root}"))
    }
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
        if !config.plain_is_local() {
            eprintln!(
                "kenko worker: registry.url {} is plain HTTP to another machine: the worker's password and session cross the network readable; use https://",
                config.url
            );
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(config.wait_s + 30))
            // A redirect would take the login (and its password) elsewhere.
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).with_context(|| format!("registry.ca {}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .unwrap_or_default();
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
            skew_told: AtomicBool::new(false),
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
        let status = response.status();
        if !status.is_success() {
            let why = match status {
                StatusCode::UNAUTHORIZED => {
                    "wrong principal or password (registry.principal, and its password)".to_owned()
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    "too many logins for now (the hub's login limits)".to_owned()
                }
                other => format!("it answered {other}"),
            };
            return Err(HubError::Login {
                principal: self.principal.clone(),
                why,
            });
        }
        let prefix = format!("{}=", kenko_api::session::COOKIE);
        response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|pair| pair.starts_with(&prefix))
            .map(str::to_owned)
            .ok_or_else(|| HubError::Garbled("the login set no session cookie".into()))
    }

    /// `GET path` in the session (logging in first, and again once when the session has
    /// ended), with `If-None-Match: etag` when given.
    async fn get(&self, path: &str, etag: Option<&str>) -> Result<reqwest::Response, HubError> {
        let mut relogged = false;
        loop {
            let sent = {
                let mut cookie = self.cookie.lock().await;
                if cookie.is_none() {
                    *cookie = Some(self.log_in().await?);
                }
                cookie.clone().unwrap_or_default()
            };
            let mut request = self
                .http
                .get(format!("{}{path}", self.base))
                .header(header::COOKIE, &sent);
            if let Some(etag) = etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            let response = request.send().await?;
            self.check_clock(&response);
            if response.status() != StatusCode::UNAUTHORIZED || relogged {
                return Ok(response);
            }
            // The session ended (a hub restart, its idle limit): log in again, unless the
            // other request has done so already.
            let mut cookie = self.cookie.lock().await;
            if cookie.as_deref() == Some(sent.as_str()) {
                *cookie = None;
            }
            relogged = true;
        }
    }

    /// Warns once when the hub's clock (its `Date`) and this machine's differ.
    fn check_clock(&self, response: &reqwest::Response) {
        let Some(hub_s) = response
            .headers()
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| jiff::fmt::rfc2822::parse(v).ok())
            .map(|t| t.timestamp().as_second())
        else {
            return;
        };
        let skew = (jiff::Timestamp::now().as_second() - hub_s).unsigned_abs();
        if skew > SKEW_WARN.as_secs() && !self.skew_told.swap(true, Ordering::Relaxed) {
            eprintln!(
                "kenko worker: registry: this machine's clock and the hub's differ by about {skew} s; consent records take force by the hub's clock and are applied by this one's: synchronize both (NTP)"
            );
        }
    }

    /// The consent records from `after` on, waiting up to `wait_s` for a newer one.
    pub async fn consents(&self, after: i64, wait_s: u64) -> Result<ConsentFeed, HubError> {
        let path = format!("/api/v1/registry/consents?after={after}&wait_s={wait_s}");
        let response = self.get(&path, None).await?;
        json(response).await
    }

    /// The hub's devices with their tag, or `None` when the list tagged `etag` is still
    /// current after waiting up to `wait_s`.
    pub async fn devices(
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
