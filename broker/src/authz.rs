//! The rules in force, swapped whole on reload, and what happens to a denial: it is counted
//! against its rule and logged (at most a few lines a second, with a count of the rest).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use kenko_config::acl::{self, Rule};
use kenko_config::poll::Poller;
use kenko_config::ConfigError;
use tracing::{error, info, warn};

use kenko_config::acl::ConsentNeed;
use kenko_ingest::consent::{ConsentBook, Consents, Purpose, HUB};

use crate::acl::{Acl, ConsentCheck, Decision, Principal, Request};
use crate::auth::Identity;
use crate::Shared;

/// Denial log lines per second before the rest are only counted.
const DENIAL_LOGS_PER_SECOND: u32 = 20;

/// The ACL in force for the whole broker.
pub struct Authorizer {
    current: RwLock<Arc<Acl>>,
    generation: AtomicU64,
    /// The rule file; `None` for the built-in rules, which never change.
    source: Option<PathBuf>,
    limiter: Mutex<Limiter>,
    denied: AtomicU64,
}

#[derive(Default)]
struct Limiter {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl Authorizer {
    pub fn new(rules: Vec<Rule>, source: Option<PathBuf>) -> Authorizer {
        Authorizer {
            current: RwLock::new(Arc::new(Acl::new(rules))),
            generation: AtomicU64::new(0),
            source,
            limiter: Mutex::default(),
            denied: AtomicU64::new(0),
        }
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<Acl> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes each time new rules take force.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Denials since start.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Logs the denials counted per rule of the rules in force (at reload and at shutdown).
    pub fn log_denials(&self) {
        let acl = self.current();
        for (rule, count) in acl.denials() {
            let rule = rule
                .and_then(|i| acl.rules().get(i))
                .map_or_else(|| "default deny".to_owned(), |r| r.source.to_string());
            info!(rule, count, "ACL denials");
        }
    }

    /// Puts `rules` in force.
    pub fn replace(&self, rules: Vec<Rule>) {
        self.log_denials();
        let acl = Arc::new(Acl::new(rules));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = acl;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the rule file again. A file that does not parse is refused, with its file, line
    /// and column, and the rules in force stay. Returns the number of rules now in force.
    pub fn reload(&self) -> Result<usize, ConfigError> {
        let Some(path) = &self.source else {
            return Ok(self.current().rules().len());
        };
        match acl::read_rules(path) {
            Ok(rules) => {
                let n = rules.len();
                self.replace(rules);
                info!(rules = n, file = %path.display(), "ACL rules reloaded");
                Ok(n)
            }
            Err(e) => {
                error!(
                    error = %e,
                    rules_in_force = self.current().rules().len(),
                    "ACL file refused; the previous rules stay in force"
                );
                Err(e)
            }
        }
    }

    /// Counts and (rate-limited) logs a denial.
    pub fn record_denial(
        &self,
        acl: &Acl,
        principal: &Principal<'_>,
        request: &Request<'_>,
        decision: &Decision,
    ) {
        acl.count_denial(decision);
        self.denied.fetch_add(1, Ordering::Relaxed);
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if limiter
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            if limiter.suppressed > 0 {
                warn!(
                    count = limiter.suppressed,
                    "further ACL denials in the last second were counted but not logged"
                );
            }
            *limiter = Limiter {
                window: Some(now),
                ..Limiter::default()
            };
        }
        if limiter.logged >= DENIAL_LOGS_PER_SECOND {
            limiter.suppressed += 1;
            return;
        }
        limiter.logged += 1;
        drop(limiter);
        let rule = decision.rule.and_then(|i| acl.rules().get(i)).map_or_else(
            || "default deny (no rule matched)".to_owned(),
            |r| r.source.to_string(),
        );
        let (action, topic) = describe(request);
        warn!(
            principal = principal.id,
            client_id = principal.client_id,
            action,
            topic,
            rule,
            reason = ?decision.reason,
            "ACL denied"
        );
    }

    /// Watches the rule file (a [`Poller`]) and reloads it when its contents change, until
    /// the poller is dropped; `None` for the built-in rules, which never change.
    pub fn watch(self: Arc<Self>, every: Duration) -> std::io::Result<Option<Poller>> {
        let Some(path) = self.source.clone() else {
            return Ok(None);
        };
        let mut seen = fingerprint(&path);
        Poller::spawn("kenko-acl", every, move || {
            let now = fingerprint(&path);
            if now != seen {
                seen = now;
                let _ = self.reload();
            }
        })
        .map(Some)
    }
}

/// What identifies a version of the file cheaply: modification time, length and contents.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64, Vec<u8>)> {
    let meta = std::fs::metadata(path).ok()?;
    let contents = std::fs::read(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), contents))
}

/// The action and topic of a request, for logs and `explain`.
pub fn describe<'a>(request: &Request<'a>) -> (&'static str, &'a str) {
    match *request {
        Request::Publish { topic, .. } => ("publish", topic),
        Request::Subscribe { filter, .. } => ("subscribe", filter),
        Request::Deliver { topic } => ("deliver", topic),
    }
}

/// Consent questions of ACL rules about one delivery: does the consent in force now cover
/// the observation it carries, made at `event_ms`? Without an event time (a publish that
/// is not the hub's observation) the answer is no.
pub struct ConsentsFor<'a> {
    pub consents: &'a Consents,
    pub event_ms: Option<i64>,
}

impl ConsentCheck for ConsentsFor<'_> {
    fn allows(&self, citizen: &str, metric: &str, grantee: &str, need: ConsentNeed) -> bool {
        let Some(event_ms) = self.event_ms else {
            return false;
        };
        let now = jiff::Timestamp::now().as_millisecond();
        let (grantee, purpose) = match need {
            ConsentNeed::Care => (grantee, Purpose::Care),
            ConsentNeed::Research => (HUB, Purpose::Research),
        };
        self.consents
            .permits(citizen, grantee, purpose, metric, event_ms, now)
    }
}

/// Whether a connection's principal is still the one it logged in as: checked again only
/// when the principals or devices of `registry.db` change.
pub(crate) struct Standing {
    shared: Arc<Shared>,
    identity: Arc<Identity>,
    generation: u64,
    current: bool,
}

impl Standing {
    pub(crate) fn new(shared: Arc<Shared>, identity: Arc<Identity>) -> Standing {
        let generation = shared.directory.generation();
        Standing {
            shared,
            identity,
            generation,
            current: true,
        }
    }

    fn current(&mut self) -> bool {
        let generation = self.shared.directory.generation();
        if generation != self.generation {
            self.generation = generation;
            self.current = self.shared.directory.still_current(&self.identity);
            if !self.current {
                warn!(
                    principal = self.identity.id,
                    "principal removed or changed since it connected: nothing more is allowed to this connection"
                );
            }
        }
        self.current
    }
}

/// One connection's view of the rules and consents: refreshed when new ones take force, so
/// a decision costs no lock.
pub(crate) struct AclView {
    authorizer: Arc<Authorizer>,
    generation: u64,
    acl: Arc<Acl>,
    book: Arc<ConsentBook>,
    consent_generation: u64,
    consents: Arc<Consents>,
    /// The connection's principal, when it is known (after authentication).
    standing: Option<Standing>,
}

impl AclView {
    pub(crate) fn new(authorizer: Arc<Authorizer>, book: Arc<ConsentBook>) -> AclView {
        let generation = authorizer.generation();
        let acl = authorizer.current();
        let consent_generation = book.generation();
        let consents = book.current();
        AclView {
            authorizer,
            generation,
            acl,
            book,
            consent_generation,
            consents,
            standing: None,
        }
    }

    /// From now on, decides nothing in favour of a principal that is no longer current.
    pub(crate) fn held_by(mut self, standing: Standing) -> AclView {
        self.standing = Some(standing);
        self
    }

    /// Decides, and counts and logs a denial.
    pub(crate) fn decide(&mut self, principal: &Principal<'_>, request: &Request<'_>) -> Decision {
        self.decide_for(principal, request, None)
    }

    /// Decides a delivery of `topic` carrying an observation made at `event_ms` (if known).
    pub(crate) fn decide_delivery(
        &mut self,
        principal: &Principal<'_>,
        topic: &str,
        event_ms: Option<i64>,
    ) -> Decision {
        self.decide_for(principal, &Request::Deliver { topic }, event_ms)
    }

    fn decide_for(
        &mut self,
        principal: &Principal<'_>,
        request: &Request<'_>,
        event_ms: Option<i64>,
    ) -> Decision {
        if let Some(standing) = &mut self.standing {
            if !standing.current() {
                let decision = Decision {
                    allowed: false,
                    rule: None,
                    reason: crate::acl::Reason::PrincipalChanged,
                };
                self.authorizer.denied.fetch_add(1, Ordering::Relaxed);
                return decision;
            }
        }
        let generation = self.authorizer.generation();
        if generation != self.generation {
            self.acl = self.authorizer.current();
            self.generation = generation;
        }
        let consent_generation = self.book.generation();
        if consent_generation != self.consent_generation {
            self.consents = self.book.current();
            self.consent_generation = consent_generation;
        }
        let consents = ConsentsFor {
            consents: &self.consents,
            event_ms,
        };
        let decision = self.acl.decide_with(principal, request, &consents);
        if !decision.allowed {
            self.authorizer
                .record_denial(&self.acl, principal, request, &decision);
        }
        decision
    }
}
