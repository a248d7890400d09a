//! Login limits shared by MQTT CONNECT and HTTP Basic: token buckets per source address and
//! per principal name charged before any password is verified, a fixed set of verification
//! threads behind a short queue that refuses rather than grows, a stand-in verification for
//! names without a password (so that unknown names take as long as known ones), and failed
//! logins counted and logged at a bounded rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use argon2::{Block, Params};
use kenko_config::{Config, LoginConfig};
use tracing::{info, warn};

use crate::auth::{hash_params, hash_with_params, verify_in, Directory, Identity};
use crate::rate::TokenBuckets;
use crate::BrokerStats;

/// Distinct keys a bucket table holds at most. Buckets that have refilled are forgotten
/// first; past this, new keys are throttled rather than let the table grow without bound.
const MAX_BUCKETS: usize = 100_000;
/// (principal, source) pairs remembered as familiar at most.
const MAX_FAMILIAR: usize = 100_000;
/// How long a successful login keeps its source familiar to the principal.
const FAMILIAR_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// At most one log line per this interval for each kind of refused login.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Which listener a login came through (the `listener` label of the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Mqtt,
    Http,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Mqtt => "mqtt",
            Listener::Http => "http",
        }
    }
}

/// The outcome of a login attempt.
#[derive(Debug)]
pub enum Login {
    Accepted(Arc<Identity>),
    /// Bad principal name or password (the caller is not told which).
    Refused,
    /// Too many attempts from this source or for this principal; try again after this long.
    Throttled(Duration),
    /// Every verification thread is busy and the queue is full; try again shortly.
    Busy,
}

/// Lets a kind of log line through at most once per interval and counts what it held back.
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub fn new(every: Duration) -> LogThrottle {
        LogThrottle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines held back since the
    /// last one; `None` when this one is to be held back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut state = lock(&self.state);
        let (last, held) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

fn per_second(per_minute: u32) -> f64 {
    f64::from(per_minute.max(1)) / 60.0
}

/// A poisoned lock only means a panic elsewhere; the tables stay usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a login comes from: a client's address, or a broker relaying its client's login
/// without the client's address.
#[derive(Debug, Clone, Copy)]
enum Attempt {
    Client(IpAddr),
    Relay(IpAddr),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Client(ip) => ip.fmt(f),
            Attempt::Relay(via) => write!(f, "a client of the broker at {via}"),
        }
    }
}

/// Addresses of one source: an IPv4 address, or an IPv6 /64 (what one host or one customer
/// is given; a host picks addresses within it at will).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

struct Job {
    hash: Arc<str>,
    password: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<bool>,
}

/// Threads that verify passwords, each in a buffer of its own that it keeps, fed by a
/// bounded queue.
struct Verifier {
    jobs: flume::Sender<Job>,
}

impl Verifier {
    fn start(threads: usize, queue: usize) -> Verifier {
        let (jobs, rx) = flume::bounded::<Job>(queue);
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("kenko-verify-{n}"))
                .spawn(move || {
                    let mut memory: Vec<Block> = Vec::new();
                    // Ends when the guard, and with it the sender, is dropped.
                    while let Ok(job) = rx.recv() {
                        let ok = verify_in(&job.hash, &job.password, &mut memory);
                        let _ = job.reply.send(ok);
                    }
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a password verification thread");
            }
        }
        Verifier { jobs }
    }

    /// The verdict, or `None` when the queue is full (or no thread runs).
    async fn verify(&self, hash: Arc<str>, password: &[u8]) -> Option<bool> {
        let (reply, verdict) = tokio::sync::oneshot::channel();
        let job = Job {
            hash,
            password: password.to_vec(),
            reply,
        };
        self.jobs.try_send(job).ok()?;
        verdict.await.ok()
    }
}

/// Counters of logins, by listener.
#[derive(Debug, Default)]
pub struct LoginStats {
    pub failures: [AtomicU64; 2],
    pub throttled: [AtomicU64; 2],
    pub busy: [AtomicU64; 2],
    /// Verifications against the stand-in hash (unknown names, principals without password).
    pub stand_in_verifications: AtomicU64,
}

impl LoginStats {
    fn count(counters: &[AtomicU64; 2], listener: Listener) {
        counters[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counters: &[AtomicU64; 2], listener: Listener) -> u64 {
        counters[listener as usize].load(Ordering::Relaxed)
    }
}

/// Every login of the hub, MQTT and HTTP alike, goes through one guard.
pub struct LoginGuard {
    sources: Mutex<TokenBuckets<IpAddr>>,
    /// Relayed logins without the client's address, per relaying broker.
    relays: Mutex<TokenBuckets<IpAddr>>,
    principals: Mutex<TokenBuckets<String>>,
    familiar: Mutex<HashMap<(String, IpAddr), Instant>>,
    verifier: Verifier,
    /// Verified when a name has no password hash, so that it costs what a real one costs.
    stand_in: Arc<str>,
    stats: Arc<BrokerStats>,
    refused_log: [LogThrottle; 2],
    throttled_log: [LogThrottle; 2],
}

impl LoginGuard {
    /// The guard for `config`'s limits; the stand-in hash takes the parameters most of the
    /// configuration's hashes have (argon2id's password baseline when there are none).
    pub fn new(config: &Config, stats: Arc<BrokerStats>) -> LoginGuard {
        let limits: &LoginConfig = &config.auth.login;
        let hashes = config
            .principals
            .iter()
            .filter_map(|p| p.password_hash.as_deref())
            .chain(
                config
                    .devices
                    .iter()
                    .filter_map(|d| d.password_hash.as_deref()),
            );
        let stand_in = hash_with_params("kenko-stand-in", most_common_params(hashes));
        LoginGuard {
            sources: Mutex::new(TokenBuckets::new(
                limits.source_burst,
                per_second(limits.source_per_minute),
                MAX_BUCKETS,
            )),
            principals: Mutex::new(TokenBuckets::new(
                limits.principal_burst,
                per_second(limits.principal_per_minute),
                MAX_BUCKETS,
            )),
            relays: Mutex::new(TokenBuckets::new(
                limits.relay_burst,
                per_second(limits.relay_per_minute),
                MAX_BUCKETS,
            )),
            familiar: Mutex::new(HashMap::new()),
            verifier: Verifier::start(limits.verify_threads, limits.verify_queue),
            stand_in: stand_in.into(),
            stats,
            refused_log: [LogThrottle::new(LOG_EVERY), LogThrottle::new(LOG_EVERY)],
            throttled_log: [LogThrottle::new(LOG_EVERY), LogThrottle::new(LOG_EVERY)],
        }
    }

    /// Checks `username` and `password` from `source` against `directory`, within limits.
    pub async fn login(
        &self,
        listener: Listener,
        source: IpAddr,
        directory: &Directory,
        username: &str,
        password: &[u8],
    ) -> Login {
        self.attempt(
            listener,
            Attempt::Client(source_key(source)),
            directory,
            username,
            password,
        )
        .await
    }

    /// As [`LoginGuard::login`], for a login relayed by the broker at `via`, which does not
    /// say where its client is: charged to the principal's limit and to the broker's relay
    /// limit (`relay_burst`, `relay_per_minute`; far above one address's, for a whole
    /// fleet's clients are behind it), never familiar.
    pub async fn login_relayed(
        &self,
        listener: Listener,
        via: IpAddr,
        directory: &Directory,
        username: &str,
        password: &[u8],
    ) -> Login {
        self.attempt(
            listener,
            Attempt::Relay(source_key(via)),
            directory,
            username,
            password,
        )
        .await
    }

    async fn attempt(
        &self,
        listener: Listener,
        from: Attempt,
        directory: &Directory,
        username: &str,
        password: &[u8],
    ) -> Login {
        let source = from;
        let charged = match self.charge(source, username) {
            Ok(charged) => charged,
            Err(wait) => {
                LoginStats::count(&self.stats.login.throttled, listener);
                self.log_throttled(listener, source, username, "too many login attempts");
                return Login::Throttled(wait);
            }
        };
        let identity = directory.get(username);
        let hash = identity.as_ref().and_then(|i| i.password_hash());
        let hash: Arc<str> = match hash {
            Some(hash) => hash.into(),
            None => {
                self.stats
                    .login
                    .stand_in_verifications
                    .fetch_add(1, Ordering::Relaxed);
                self.stand_in.clone()
            }
        };
        let Some(matched) = self.verifier.verify(hash, password).await else {
            // Nothing was tried: the attempt is not held against anyone.
            self.give_back(source, username, charged);
            LoginStats::count(&self.stats.login.busy, listener);
            self.log_throttled(
                listener,
                source,
                username,
                "password verification queue full",
            );
            return Login::Busy;
        };
        match identity {
            Some(identity) if matched && identity.has_password() => {
                self.give_back(source, username, charged);
                if let Attempt::Client(source) = source {
                    self.remember(username, source);
                }
                Login::Accepted(identity)
            }
            known => {
                LoginStats::count(&self.stats.login.failures, listener);
                self.log_refused(listener, source, username, known.is_some());
                Login::Refused
            }
        }
    }

    /// Takes a token from the source's bucket and, unless the principal has logged in from
    /// this source before, from the principal's. `Ok(true)` if the principal's was taken.
    fn charge(&self, from: Attempt, username: &str) -> Result<bool, Duration> {
        let now = Instant::now();
        match from {
            Attempt::Client(source) => {
                lock(&self.sources).take(&source, now)?;
                if self.is_familiar(username, source, now) {
                    return Ok(false);
                }
            }
            Attempt::Relay(via) => lock(&self.relays).take(&via, now)?,
        }
        let name = username.to_owned();
        // A refused attempt still costs its source: spraying names must not be free. A
        // relaying broker's budget is its whole fleet's, so hammering one name through it
        // costs that name's budget alone.
        let taken = lock(&self.principals).take(&name, now);
        if let (Err(_), Attempt::Relay(via)) = (&taken, from) {
            lock(&self.relays).give_back(&via);
        }
        taken.map(|()| true)
    }

    fn give_back(&self, from: Attempt, username: &str, principal_charged: bool) {
        match from {
            Attempt::Client(source) => lock(&self.sources).give_back(&source),
            Attempt::Relay(via) => lock(&self.relays).give_back(&via),
        }
        if principal_charged {
            lock(&self.principals).give_back(&username.to_owned());
        }
    }

    /// A principal keeps logging in from where it did before even while someone elsewhere
    /// guesses its password: the guesser exhausts the principal's bucket, not the device's.
    fn is_familiar(&self, username: &str, source: IpAddr, now: Instant) -> bool {
        let familiar = lock(&self.familiar);
        familiar
            .get(&(username.to_owned(), source))
            .is_some_and(|at| now.saturating_duration_since(*at) < FAMILIAR_FOR)
    }

    fn remember(&self, username: &str, source: IpAddr) {
        let now = Instant::now();
        let mut familiar = lock(&self.familiar);
        if familiar.len() >= MAX_FAMILIAR {
            familiar.retain(|_, at| now.saturating_duration_since(*at) < FAMILIAR_FOR);
        }
        if familiar.len() < MAX_FAMILIAR || familiar.contains_key(&(username.to_owned(), source)) {
            familiar.insert((username.to_owned(), source), now);
        }
    }

    fn log_refused(&self, listener: Listener, source: Attempt, username: &str, known: bool) {
        let Some(held_back) = self.refused_log[listener as usize].allow(Instant::now()) else {
            return;
        };
        let failures = LoginStats::get(&self.stats.login.failures, listener);
        warn!(
            listener = listener.name(),
            %source,
            username,
            known,
            held_back,
            failures,
            "login failed: bad username or password (one line a second at most; held_back counts the lines not written)"
        );
    }

    fn log_throttled(&self, listener: Listener, source: Attempt, username: &str, why: &str) {
        let Some(held_back) = self.throttled_log[listener as usize].allow(Instant::now()) else {
            return;
        };
        info!(
            listener = listener.name(),
            %source,
            username,
            held_back,
            "login refused before verification: {why}"
        );
    }
}

/// The parameters most of `hashes` have; argon2id's password baseline when none is usable.
fn most_common_params<'a>(hashes: impl Iterator<Item = &'a str>) -> Params {
    let mut counts: HashMap<(u32, u32, u32, Option<usize>), usize> = HashMap::new();
    for params in hashes.filter_map(hash_params) {
        let key = (
            params.m_cost(),
            params.t_cost(),
            params.p_cost(),
            params.output_len(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(key, n)| (*n, *key))
        .and_then(|((m, t, p, len), _)| Params::new(m, t, p, len).ok())
        .or_else(|| Params::new(19 * 1024, 2, 1, None).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{hash_password, Cost};

    #[test]
    fn log_throttle_counts_what_it_holds_back() {
        let log = LogThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(log.allow(t0 + Duration::from_millis(20)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn ipv6_sources_are_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }

    fn guard_for(text: &str) -> (LoginGuard, Directory, Arc<BrokerStats>) {
        let config = Config::from_toml(text, std::path::Path::new("kenko.toml")).expect("config");
        let stats = Arc::new(BrokerStats::default());
        let guard = LoginGuard::new(&config, stats.clone());
        let directory = Directory::from_config(&config).expect("directory");
        (guard, directory, stats)
    }

    #[tokio::test]
    async fn a_guessed_principal_still_logs_in_from_where_it_did_before() {
        let hash = hash_password("right", Cost::Token);
        let text = format!(
            "[auth.login]\nsource_burst = 100\nprincipal_burst = 3\nprincipal_per_minute = 1\n\n[[principals]]\nid = \"p\"\npassword_hash = \"{hash}\"\n"
        );
        let (guard, dir, stats) = guard_for(&text);
        let home: IpAddr = "10.0.0.1".parse().expect("ip");
        let attacker: IpAddr = "10.0.0.66".parse().expect("ip");
        let stranger: IpAddr = "10.0.0.77".parse().expect("ip");
        let ok = guard.login(Listener::Mqtt, home, &dir, "p", b"right").await;
        assert!(matches!(ok, Login::Accepted(_)), "{ok:?}");
        for _ in 0..3 {
            let bad = guard
                .login(Listener::Mqtt, attacker, &dir, "p", b"guess")
                .await;
            assert!(matches!(bad, Login::Refused), "{bad:?}");
        }
        let bad = guard
            .login(Listener::Http, attacker, &dir, "p", b"guess")
            .await;
        assert!(matches!(bad, Login::Throttled(_)), "{bad:?}");
        let other = guard
            .login(Listener::Mqtt, stranger, &dir, "p", b"right")
            .await;
        assert!(matches!(other, Login::Throttled(_)), "{other:?}");
        let home_again = guard.login(Listener::Mqtt, home, &dir, "p", b"right").await;
        assert!(matches!(home_again, Login::Accepted(_)), "{home_again:?}");
        assert_eq!(LoginStats::get(&stats.login.failures, Listener::Mqtt), 3);
        assert_eq!(LoginStats::get(&stats.login.throttled, Listener::Http), 1);
        assert_eq!(LoginStats::get(&stats.login.throttled, Listener::Mqtt), 1);
    }

    #[tokio::test]
    async fn relayed_logins_are_limited_per_principal_and_per_broker() {
        let hash = hash_password("right", Cost::Token);
        let mut text = String::from(
            "[auth.login]\nsource_burst = 1\nsource_per_minute = 1\nprincipal_burst = 2\nprincipal_per_minute = 1\nrelay_burst = 5\nrelay_per_minute = 1\n\n",
        );
        for id in ["p", "q", "r"] {
            text.push_str(&format!(
                "[[principals]]\nid = \"{id}\"\npassword_hash = \"{hash}\"\n\n"
            ));
        }
        let (guard, dir, _) = guard_for(&text);
        let broker: IpAddr = "10.0.0.9".parse().expect("ip");
        let other_broker: IpAddr = "10.0.0.10".parse().expect("ip");
        let login = |via, id: &'static str, pw: &'static [u8]| {
            guard.login_relayed(Listener::Mqtt, via, &dir, id, pw)
        };
        // More principals than one address's burst log in through the same broker: a
        // success gives its attempt back.
        for id in ["p", "q", "r", "p", "q", "r"] {
            let ok = login(broker, id, b"right").await;
            assert!(matches!(ok, Login::Accepted(_)), "{id}: {ok:?}");
        }
        // Guessing one principal's password exhausts that principal's budget only.
        for _ in 0..2 {
            let bad = login(broker, "p", b"guess").await;
            assert!(matches!(bad, Login::Refused), "{bad:?}");
        }
        let held = login(broker, "p", b"right").await;
        assert!(matches!(held, Login::Throttled(_)), "{held:?}");
        // Guesses spread over names run out the broker's relay budget (5: two spent; the
        // attempt the principal's limit refused was given back).
        for name in ["n1", "n2", "n3"] {
            let bad = login(broker, name, b"guess").await;
            assert!(matches!(bad, Login::Refused), "{name}: {bad:?}");
        }
        let spent = login(broker, "q", b"right").await;
        assert!(matches!(spent, Login::Throttled(_)), "{spent:?}");
        let elsewhere = login(other_broker, "q", b"right").await;
        assert!(matches!(elsewhere, Login::Accepted(_)), "{elsewhere:?}");
    }

    #[tokio::test]
    async fn unknown_names_cost_a_verification_too() {
        let hash = hash_password("right", Cost::Token);
        let text = format!("[[principals]]\nid = \"p\"\npassword_hash = \"{hash}\"\n");
        let (guard, dir, stats) = guard_for(&text);
        assert!(
            guard.stand_in.contains("m=256,t=1,p=1"),
            "{}",
            guard.stand_in
        );
        let source: IpAddr = "10.0.0.1".parse().expect("ip");
        let unknown = guard
            .login(Listener::Http, source, &dir, "nobody", b"x")
            .await;
        assert!(matches!(unknown, Login::Refused), "{unknown:?}");
        assert_eq!(
            stats.login.stand_in_verifications.load(Ordering::Relaxed),
            1
        );
        let stand_in_password = guard.login(Listener::Http, source, &dir, "q", b"kenko-stand-in");
        assert!(matches!(stand_in_password.await, Login::Refused));
    }

    #[tokio::test]
    async fn a_full_verification_queue_refuses_at_once() {
        let hash = hash_password("right", Cost::Password);
        let text = format!(
            "[auth.login]\nsource_burst = 1000\nprincipal_burst = 1000\nverify_threads = 1\nverify_queue = 1\n\n[[principals]]\nid = \"p\"\npassword_hash = \"{hash}\"\n"
        );
        let (guard, dir, stats) = guard_for(&text);
        let source: IpAddr = "10.0.0.1".parse().expect("ip");
        let attempts = (0..8).map(|_| guard.login(Listener::Mqtt, source, &dir, "p", b"guess"));
        let outcomes = futures_util::future::join_all(attempts).await;
        let busy = outcomes.iter().filter(|o| matches!(o, Login::Busy)).count();
        assert!(
            busy >= 6,
            "one verifies, one waits, the rest are refused: {outcomes:?}"
        );
        assert_eq!(
            LoginStats::get(&stats.login.busy, Listener::Mqtt),
            busy as u64
        );
    }
}
