//! Counters kept on the event loop and rendered as Prometheus text on the ops listener.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::admission::Refused;

#[derive(Default)]
pub struct Metrics {
    /// (status, reason) → answered requests.
    responses: RefCell<BTreeMap<(u16, &'static str), u64>>,
    /// Refused handshakes by reason.
    tls_rejected: RefCell<BTreeMap<&'static str, u64>>,
    pub connections_accepted: Cell<u64>,
    /// Producer connections closed before TLS, by [`Refused::index`].
    connections_refused: [Cell<u64>; Refused::ALL.len()],
    pub reloads: Cell<u64>,
    pub reloads_rejected: Cell<u64>,
    /// Handling time of producer requests with a body (read → answer ready, the group commit
    /// included), by upper bound in [`LATENCY_BOUNDS_US`]; the last slot is `+Inf`.
    latency: RefCell<[u64; LATENCY_BOUNDS_US.len() + 1]>,
    latency_sum_us: Cell<u64>,
}

/// Upper bounds of the latency histogram's buckets, in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    5_000_000,
];

impl Metrics {
    pub fn count(&self, status: u16, reason: &'static str) {
        *self
            .responses
            .borrow_mut()
            .entry((status, reason))
            .or_default() += 1;
    }

    /// One producer request handled in `us` microseconds.
    pub fn observe_latency(&self, us: u64) {
        let slot = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        if let Some(n) = self.latency.borrow_mut().get_mut(slot) {
            *n += 1;
        }
        self.latency_sum_us
            .set(self.latency_sum_us.get().saturating_add(us));
    }

    pub fn connection_refused(&self, why: Refused) {
        if let Some(n) = self.connections_refused.get(why.index()) {
            n.set(n.get() + 1);
        }
    }

    pub fn tls_rejected(&self, reason: &'static str) {
        *self.tls_rejected.borrow_mut().entry(reason).or_default() += 1;
    }

    pub fn responses(&self, status: u16) -> u64 {
        self.responses
            .borrow()
            .iter()
            .filter(|((s, _), _)| *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// Render every counter, plus the gauges given by the caller.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut s = String::with_capacity(2048);
        s.push_str(
            "# HELP vvgate_responses_total Answered producer requests by status and reason.\n",
        );
        s.push_str("# TYPE vvgate_responses_total counter\n");
        for ((status, reason), n) in self.responses.borrow().iter() {
            let _ = writeln!(
                s,
                "vvgate_responses_total{{status=\"{status}\",reason=\"{}\"}} {n}",
                escape(reason)
            );
        }
        s.push_str("# HELP vvgate_request_duration_seconds Handling time of producer requests with a body, from the body read to the answer (the group commit included).\n");
        s.push_str("# TYPE vvgate_request_duration_seconds histogram\n");
        let buckets = *self.latency.borrow();
        let mut cumulative = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            match LATENCY_BOUNDS_US.get(i) {
                Some(b) => {
                    let _ = writeln!(
                        s,
                        "vvgate_request_duration_seconds_bucket{{le=\"{}.{:06}\"}} {cumulative}",
                        b / 1_000_000,
                        b % 1_000_000
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "vvgate_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let sum = self.latency_sum_us.get();
        let _ = writeln!(
            s,
            "vvgate_request_duration_seconds_sum {}.{:06}\nvvgate_request_duration_seconds_count {cumulative}",
            sum / 1_000_000,
            sum % 1_000_000
        );
        s.push_str(
            "# HELP vvgate_tls_handshake_failures_total Refused TLS handshakes by reason.\n",
        );
        s.push_str("# TYPE vvgate_tls_handshake_failures_total counter\n");
        for (reason, n) in self.tls_rejected.borrow().iter() {
            let _ = writeln!(
                s,
                "vvgate_tls_handshake_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        s.push_str("# HELP vvgate_connections_refused_total Producer connections closed before TLS, by reason (connection_limit: max_connections open; connection_rate: over max_new_connections_per_second).\n");
        s.push_str("# TYPE vvgate_connections_refused_total counter\n");
        for why in Refused::ALL {
            let n = self
                .connections_refused
                .get(why.index())
                .map_or(0, Cell::get);
            let _ = writeln!(
                s,
                "vvgate_connections_refused_total{{reason=\"{}\"}} {n}",
                why.reason()
            );
        }
        for (name, help, value) in [
            (
                "vvgate_connections_accepted_total",
                "Producer connections accepted.",
                self.connections_accepted.get(),
            ),
            (
                "vvgate_config_reloads_total",
                "Configuration reloads applied.",
                self.reloads.get(),
            ),
            (
                "vvgate_config_reloads_rejected_total",
                "Configuration reloads refused (the running configuration stayed).",
                self.reloads_rejected.get(),
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        if let Some((allocations, bytes)) = crate::heap::totals() {
            for (name, help, value) in [
                (
                    "vvgate_heap_allocations_total",
                    "Heap allocations and reallocations, all threads (alloc-count builds).",
                    allocations,
                ),
                (
                    "vvgate_heap_allocated_bytes_total",
                    "Bytes allocated on the heap, all threads (alloc-count builds).",
                    bytes,
                ),
            ] {
                let _ = writeln!(
                    s,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
                );
            }
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        s
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn latency_histogram_is_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        m.observe_latency(400);
        m.observe_latency(1_500);
        m.observe_latency(9_000_000);
        let text = m.render(&[]);
        for line in [
            "vvgate_request_duration_seconds_bucket{le=\"0.000500\"} 1\n",
            "vvgate_request_duration_seconds_bucket{le=\"0.001000\"} 1\n",
            "vvgate_request_duration_seconds_bucket{le=\"0.002000\"} 2\n",
            "vvgate_request_duration_seconds_bucket{le=\"5.000000\"} 2\n",
            "vvgate_request_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "vvgate_request_duration_seconds_sum 9.001900\n",
            "vvgate_request_duration_seconds_count 3\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
