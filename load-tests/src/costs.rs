//! What each service spent on a run's orders, from its own `/metrics`: the CPU time it used in
//! the measured window (`process_cpu_seconds_total` read before and after) per answered order,
//! and the most memory it has held (`process_peak_resident_memory_bytes`, read after). So a
//! lever can be judged by the CPU it saves, which a noisy machine blurs far less than
//! throughput, and the memory goal is read off every run. The database's own CPU is not in it
//! (it is not one of the services); on a machine of its own, the rest of the machine is.

use crate::target::Target;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The services' figures at one moment: (CPU seconds, peak resident bytes) by service, for
/// those that answered and report them.
#[derive(Debug, Clone, Default)]
pub struct Reading(BTreeMap<&'static str, (f64, f64)>);

/// CPU per order and peak memory, by service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// CPU milliseconds per answered order in the measured window.
    pub cpu_ms_per_order: BTreeMap<String, f64>,
    /// The most resident memory each service has held since it started, in MB.
    pub peak_rss_mb: BTreeMap<String, f64>,
}

/// One value of a Prometheus text exposition: the line `name value` (no labels).
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Reads every service's CPU time and peak memory; a service that does not answer or does not
/// report them is left out (an older build), never an error: the run's figures stand without.
pub async fn read(http: &reqwest::Client, target: &Target) -> Reading {
    let services = [
        ("order-svc", &target.order_url),
        ("payment-svc", &target.payment_url),
        ("inventory-svc", &target.inventory_url),
        ("coordinator", &target.coordinator_url),
    ];
    let mut reading = Reading::default();
    for (service, url) in services {
        let text = match http.get(format!("{url}/metrics")).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => continue,
        };
        if let (Some(cpu), Some(peak)) = (
            value(&text, "process_cpu_seconds_total"),
            value(&text, "process_peak_resident_memory_bytes"),
        ) {
            reading.0.insert(service, (cpu, peak));
        }
    }
    reading
}

impl Costs {
    /// What each service read at both ends spent per order between them (`None` when none
    /// did, or no order was answered).
    pub fn between(before: &Reading, after: &Reading, orders: u64) -> Option<Costs> {
        let mut costs = Costs::default();
        for (service, (cpu_after, peak)) in &after.0 {
            let Some((cpu_before, _)) = before.0.get(service) else {
                continue;
            };
            if orders > 0 && cpu_after >= cpu_before {
                costs.cpu_ms_per_order.insert(
                    (*service).to_owned(),
                    (cpu_after - cpu_before) * 1e3 / orders as f64,
                );
                costs.peak_rss_mb.insert((*service).to_owned(), peak / 1e6);
            }
        }
        (!costs.cpu_ms_per_order.is_empty()).then_some(costs)
    }
}

impl std::fmt::Display for Costs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: f64 = self.cpu_ms_per_order.values().sum();
        write!(f, "CPU per order: {total:.2} ms in the services (")?;
        for (i, (service, ms)) in self.cpu_ms_per_order.iter().enumerate() {
            write!(f, "{}{service} {ms:.2}", if i > 0 { ", " } else { "" })?;
        }
        write!(f, "); peak RSS MB: ")?;
        for (i, (service, mb)) in self.peak_rss_mb.iter().enumerate() {
            write!(f, "{}{service} {mb:.1}", if i > 0 { ", " } else { "" })?;
        }
        writeln!(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_read_from_its_own_line_and_not_from_a_longer_name() {
        let text = "# HELP process_cpu_seconds User\n# TYPE process_cpu_seconds counter\n\
                    process_cpu_seconds_total_x 9\nprocess_cpu_seconds_total 1.5\n# EOF\n";
        assert_eq!(value(text, "process_cpu_seconds_total"), Some(1.5));
        assert_eq!(value(text, "process_peak_resident_memory_bytes"), None);
    }

    #[test]
    fn costs_are_cpu_per_order_over_the_window_for_the_services_read_at_both_ends() {
        let before = Reading(BTreeMap::from([
            ("order-svc", (10.0, 1e7)),
            ("coordinator", (4.0, 1e7)),
        ]));
        let after = Reading(BTreeMap::from([
            ("order-svc", (12.0, 2.2e7)),
            ("coordinator", (5.0, 1.9e7)),
            // Restarted or not read before: no window to divide.
            ("payment-svc", (1.0, 1e7)),
        ]));
        let costs = Costs::between(&before, &after, 1_000).unwrap();
        assert_eq!(
            costs.cpu_ms_per_order,
            BTreeMap::from([("coordinator".into(), 1.0), ("order-svc".into(), 2.0)])
        );
        assert_eq!(
            costs.peak_rss_mb,
            BTreeMap::from([("coordinator".into(), 19.0), ("order-svc".into(), 22.0)])
        );
        assert_eq!(Costs::between(&before, &after, 0), None);
        assert_eq!(Costs::between(&Reading::default(), &after, 1_000), None);
    }
}
