//! Heap accounting for benchmarks. With the `alloc-count` feature the process allocates
//! through a counting wrapper of the system allocator, and `/metrics` reports the totals
//! (`vvgate_heap_allocations_total`, `vvgate_heap_allocated_bytes_total`), so `vvctl bench`
//! can print allocations per accepted request at steady state. Off by default: the counters
//! are shared atomics that every allocation of every thread touches.

/// Allocations (including reallocations) and bytes allocated since the start, when counted.
pub fn totals() -> Option<(u64, u64)> {
    imp::totals()
}

#[cfg(feature = "alloc-count")]
mod imp {
    use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
    use std::alloc::System;

    #[global_allocator]
    static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

    pub(super) fn totals() -> Option<(u64, u64)> {
        let s = GLOBAL.stats();
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        Some((
            n(s.allocations) + n(s.reallocations),
            n(s.bytes_allocated) + n(s.bytes_reallocated.max(0).unsigned_abs()),
        ))
    }
}

#[cfg(not(feature = "alloc-count"))]
mod imp {
    pub(super) fn totals() -> Option<(u64, u64)> {
        None
    }
}
