//! Medians per system and kenko's ratios to the other brokers. Only ratios within one
//! invocation mean anything: the machine's load changes between invocations.

use std::collections::BTreeMap;

use crate::systems::System;

/// Rates (messages or deliveries per second) of every run, by system.
#[derive(Default)]
pub struct Samples {
    rates: BTreeMap<System, Vec<f64>>,
}

impl Samples {
    /// Runs every system in turn, `rounds` times (so that drift in the machine's load hits
    /// each alike), and collects the rate each run returns.
    pub async fn alternate(
        rounds: usize,
        systems: &[System],
        mut run_once: impl AsyncFnMut(System) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Samples> {
        let mut samples = Samples::default();
        for _round in 0..rounds {
            for &system in systems {
                let rate = run_once(system).await?;
                samples.add(system, rate);
            }
        }
        Ok(samples)
    }

    pub fn add(&mut self, system: System, rate: f64) {
        self.rates.entry(system).or_default().push(rate);
    }

    pub fn medians(&self) -> BTreeMap<System, f64> {
        self.rates
            .iter()
            .filter_map(|(system, rates)| Some((*system, median(rates)?)))
            .collect()
    }

    /// "median msgs/s: ..." and "ratios: ..." lines.
    pub fn summary(&self, unit: &str) -> String {
        let medians = self.medians();
        let list: Vec<String> = medians
            .iter()
            .map(|(system, rate)| format!("{system} {rate:.0}"))
            .collect();
        let mut text = format!("median {unit}: {}", list.join(", "));
        let ratios = ratios(&medians);
        if !ratios.is_empty() {
            text.push_str(&format!("\nratios: {}", ratios.join("  ")));
        }
        text
    }
}

/// kenko's medians over each other broker's, for the pairs that ran.
fn ratios(medians: &BTreeMap<System, f64>) -> Vec<String> {
    let mut out = Vec::new();
    for kenko in [System::KenkoBroker, System::KenkoIngest] {
        for other in [System::Rumqttd, System::Mosquitto] {
            if let (Some(k), Some(o)) = (medians.get(&kenko), medians.get(&other)) {
                if *o > 0.0 {
                    out.push(format!("{kenko}/{other} {:.2}", k / o));
                }
            }
        }
    }
    out
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn summary_gives_kenko_over_the_others() {
        let mut samples = Samples::default();
        samples.add(System::Mosquitto, 100.0);
        samples.add(System::Rumqttd, 200.0);
        samples.add(System::KenkoBroker, 50.0);
        samples.add(System::KenkoBroker, 150.0);
        samples.add(System::KenkoBroker, 100.0);
        let text = samples.summary("msgs/s");
        assert!(text.contains("kenko-broker 100"), "{text}");
        assert!(text.contains("kenko-broker/rumqttd 0.50"), "{text}");
        assert!(text.contains("kenko-broker/mosquitto 1.00"), "{text}");
        assert!(!text.contains("kenko-ingest"), "{text}");
    }
}
