//! What the fuzz targets share: an allocator that bounds what one input may allocate, and the
//! fixed principals the ACL targets ask about.
//!
//! The targets build without sanitizers (the stable toolchain has none, see docs/fuzzing.md),
//! so libFuzzer's `-malloc_limit_mb` has no malloc hooks to work with. [`Counting`] stands in:
//! it keeps the live heap and its peak, [`bounded`] fails an input whose decoding made the
//! heap grow by more than a fixed multiple of the input's size, and any single allocation
//! larger than [`MAX_ALLOCATION`] is refused, which aborts the process (a crash libFuzzer
//! records with the input) instead of taking the machine's memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The largest single allocation any target may make: far more than a 256 KiB MQTT packet or
/// a telemetry payload could need.
pub const MAX_ALLOCATION: usize = 64 << 20;

/// Heap growth allowed per byte of input, plus [`SLACK`]: decoding may copy its input a few
/// times over into owned strings, observations and vectors that double as they grow, but
/// never in proportion to a number the input merely states.
pub const PER_INPUT_BYTE: usize = 64;
pub const SLACK: usize = 1 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting.
pub struct Counting;

impl Counting {
    fn grew(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }

    /// Refuses a block over [`MAX_ALLOCATION`], else gets it from `get` and counts it.
    fn counted(size: usize, get: impl FnOnce() -> *mut u8) -> *mut u8 {
        if size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        let p = get();
        if !p.is_null() {
            Self::grew(size);
        }
        p
    }
}

// SAFETY: every call is passed on to `System` unchanged; the counters do not touch memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::counted(layout.size(), || System.alloc(layout))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::counted(layout.size(), || System.alloc_zeroed(layout))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` on one input of `len` bytes and panics if the heap grew by more than
/// `PER_INPUT_BYTE * len + SLACK` bytes at any moment meanwhile.
pub fn bounded<T>(len: usize, f: impl FnOnce() -> T) -> T {
    bounded_by(len, PER_INPUT_BYTE, SLACK, f)
}

/// [`bounded`] with a bound of its own: `per_byte * len + slack`.
pub fn bounded_by<T>(len: usize, per_byte: usize, slack: usize, f: impl FnOnce() -> T) -> T {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let limit = per_byte.saturating_mul(len).saturating_add(slack);
    assert!(
        grown <= limit,
        "an input of {len} bytes made the heap grow by {grown} bytes (limit {limit})"
    );
    out
}

/// Whether to step around the known, reported bugs that are not fixed yet (docs/fuzzing.md,
/// "Crashes found"), so that a run goes on to find others. Set `KENKO_FUZZ_KNOWN_BUGS=1` to
/// step around nothing: the inputs in the corpus that found those bugs then crash until they
/// are fixed, and the guard can go.
pub fn avoid_known_bugs() -> bool {
    static AVOID: OnceLock<bool> = OnceLock::new();
    *AVOID.get_or_init(|| std::env::var_os("KENKO_FUZZ_KNOWN_BUGS").is_none_or(|v| v != "1"))
}

/// A principal the ACL targets ask for, with the values the registry would bind to it.
pub struct Who {
    pub id: &'static str,
    pub client_id: &'static str,
    pub username: Option<&'static str>,
    pub roles: Vec<String>,
    pub device: Option<&'static str>,
    pub citizen: Option<&'static str>,
}

impl Who {
    pub fn principal(&self) -> kenko_broker::acl::Principal<'_> {
        kenko_broker::acl::Principal {
            id: self.id,
            client_id: self.client_id,
            username: self.username,
            roles: &self.roles,
            device: self.device,
            citizen: self.citizen,
        }
    }
}

/// One principal of each role the default rules name, plus the anonymous one, so that every
/// rule of `config/acl.default.toml` and `config/interop-acl.toml` is reached.
pub fn principals() -> &'static [Who] {
    static PRINCIPALS: OnceLock<Vec<Who>> = OnceLock::new();
    PRINCIPALS.get_or_init(build_principals)
}

fn build_principals() -> Vec<Who> {
    let who = |id, roles: &[&str], device, citizen| Who {
        id,
        client_id: id,
        username: Some(id),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        device,
        citizen,
    };
    vec![
        who("bed-001", &["device"], Some("bed-001"), Some("citizen-001")),
        who("app-001", &["citizen"], None, Some("citizen-001")),
        who("clinic", &["care"], None, None),
        who("lab", &["analyst"], None, None),
        who("ops", &["operator"], None, None),
        Who {
            id: "anonymous",
            client_id: "kenko-auto-1",
            username: None,
            roles: vec!["anonymous".to_owned()],
            device: None,
            citizen: None,
        },
    ]
}

pub mod mqtt;
