//! How real devices misbehave, deterministically per device: a clock a little off, periods
//! without a connection to the hub (after which they send what they measured meanwhile), and
//! now and then the same message twice (sent again after an acknowledgement was lost).

use jiff::SignedDuration;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::hash::{mix, unit};

/// The largest clock error of a simulated device. The hub accepts event times up to five
/// minutes ahead of its clock; skew stays well inside that (never past ±240 s).
pub const MAX_SKEW: SignedDuration = SignedDuration::from_secs(90);
/// Offline periods are drawn per block of this many ticks (message slots), at most one each.
const BLOCK_TICKS: u64 = 100;
/// Chance that a block has an offline period.
const OFFLINE_CHANCE: f64 = 0.3;
/// Chance that a good message is sent twice.
const DUPLICATE_CHANCE: f64 = 0.02;

/// One device's habits.
#[derive(Debug, Clone)]
pub(crate) struct Habits {
    seed: u64,
    skew: SignedDuration,
    duplicates: SmallRng,
}

impl Habits {
    pub fn new(seed: u64) -> Habits {
        let max = MAX_SKEW.as_millis() as i64;
        let skew_ms = -max + (2.0 * max as f64 * unit(seed, -1, 1)) as i64;
        Habits {
            seed,
            skew: SignedDuration::from_millis(skew_ms),
            duplicates: SmallRng::seed_from_u64(mix(seed ^ 0x0064_7570)),
        }
    }

    /// How far the device's clock is ahead of true time (negative: behind). Constant.
    pub fn skew(&self) -> SignedDuration {
        self.skew
    }

    /// Whether the device has no connection to the hub at message slot `tick`. About three
    /// blocks in ten of 100 slots hold one offline period of 5–40 slots: at one message a
    /// second, a lost link for up to 40 s; replaying a minute apart, up to 40 minutes.
    pub fn offline(&self, tick: u64) -> bool {
        let block = (tick / BLOCK_TICKS) as i64;
        if unit(self.seed, block, 2) >= OFFLINE_CHANCE {
            return false;
        }
        let start = (60.0 * unit(self.seed, block, 3)) as u64;
        let length = 5 + (35.0 * unit(self.seed, block, 4)) as u64;
        (start..start + length).contains(&(tick % BLOCK_TICKS))
    }

    /// Whether to send the message just sent once more. Drawn in sequence.
    pub fn duplicate(&mut self) -> bool {
        self.duplicates.random_bool(DUPLICATE_CHANCE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_constant_per_device_and_bounded() {
        let skews: Vec<SignedDuration> = (0..500).map(|s| Habits::new(s).skew()).collect();
        assert!(skews.iter().all(|s| s.abs() <= MAX_SKEW));
        assert!(MAX_SKEW <= SignedDuration::from_secs(240));
        assert!(skews.iter().any(|s| *s > SignedDuration::from_secs(60)));
        assert!(skews.iter().any(|s| *s < SignedDuration::from_secs(-60)));
        assert_eq!(Habits::new(7).skew(), Habits::new(7).skew());
    }

    #[test]
    fn offline_periods_come_in_runs() {
        let habits = Habits::new(3);
        let offline: Vec<bool> = (0..10_000).map(|t| habits.offline(t)).collect();
        let share = offline.iter().filter(|&&o| o).count() as f64 / offline.len() as f64;
        assert!((0.02..0.12).contains(&share), "{share}");
        let runs = offline.windows(2).filter(|w| !w[0] && w[1]).count();
        assert!((10..60).contains(&runs), "{runs} periods");
        assert!(offline.windows(2).filter(|w| w[0] && w[1]).count() > runs * 3);
    }

    #[test]
    fn a_few_messages_are_sent_twice() {
        let mut habits = Habits::new(1);
        let twice = (0..10_000).filter(|_| habits.duplicate()).count();
        assert!((100..400).contains(&twice), "{twice}");
    }
}
