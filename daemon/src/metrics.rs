//! Counters kept on the event loop and rendered as Prometheus text on the ops listener.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Default)]
pub struct Metrics {
    /// (status, reason) → answered requests.
    responses: RefCell<BTreeMap<(u16, &'static str), u64>>,
    /// Refused handshakes by reason.
    tls_rejected: RefCell<BTreeMap<&'static str, u64>>,
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub reloads: Cell<u64>,
    pub reloads_rejected: Cell<u64>,
}

impl Metrics {
    pub fn count(&self, status: u16, reason: &'static str) {
        *self
            .responses
            .borrow_mut()
            .entry((status, reason))
            .or_default() += 1;
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
        for (name, help, value) in [
            (
                "vvgate_connections_accepted_total",
                "Producer connections accepted.",
                self.connections_accepted.get(),
            ),
            (
                "vvgate_connections_refused_total",
                "Producer connections refused before TLS (connection limit, draining).",
                self.connections_refused.get(),
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
