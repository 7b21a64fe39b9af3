//! Check step 14, the Ed25519 signature (CONTRACT.md §3.4), for the requests on the event
//! loop: singly with ring, or in batches (`signature_verification`).
//!
//! In batch mode a request's check chain submits (keys, message, signature) and waits. The
//! first submitter of a batch yields once, so that the other connections ready in the same
//! event-loop turn reach step 14 and join, then verifies everything submitted (at most
//! [`MAX_BATCH`]; a batch that fills up is verified at once by the submitter that filled it).
//! A lone request is verified singly with ring. When the batch equation fails, every
//! signature of the batch is verified again singly with ring, so exactly the invalid ones are
//! refused, and the verifier stays in single mode for [`FAILED_BATCH_BACKOFF`]: a flood of
//! bad signatures costs what it costs in single mode, plus one batch a second.
//!
//! A batch is one random linear combination over the signatures; `batch.rs` says which
//! signatures stay out of it (verified with ring instead) and why.

mod batch;

use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::config::SignatureVerification;
use crate::ids::Random;

/// Most signatures verified in one batch (per-signature cost is lowest around 16; more costs
/// more per signature, and adds latency).
pub const MAX_BATCH: usize = 16;

/// Signed messages longer than this are verified singly: hashing dominates their cost, and
/// the batch's copy of the message is bounded to `MAX_BATCH` times this.
pub const MAX_BATCH_MESSAGE: usize = 16 * 1024;

/// Single mode after a failed batch, for this long.
pub const FAILED_BATCH_BACKOFF: Duration = Duration::from_secs(1);

/// The producer keys a signature may verify with, the likeliest first.
pub type Candidates = heapless::Vec<[u8; 32], 2>;

/// Counters for `/metrics`.
#[derive(Default)]
pub struct VerifyStats {
    /// Batches of two or more signatures verified with the batch equation.
    pub batches: Cell<u64>,
    /// Signatures in those batches.
    pub batched: Cell<u64>,
    /// Batches whose equation failed (each signature was then verified singly).
    pub failed_batches: Cell<u64>,
    /// Signatures verified singly with ring (single mode, lone, prefiltered, or re-verified).
    pub single: Cell<u64>,
}

/// The signature step's verifier, shared by every connection on the event loop.
#[derive(Default)]
pub struct Verifier {
    state: RefCell<State>,
    /// Notified when a batch is done.
    done: event_listener::Event,
    /// Single mode until then, after a failed batch.
    single_until: Cell<Option<Instant>>,
    pub stats: VerifyStats,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    /// The submitted messages, back to back.
    arena: Vec<u8>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// The slot of the submitter that will verify the pending batch.
    leader: Option<usize>,
    equation: batch::Equation,
    keys: batch::KeyCache,
    rng: Random,
}

struct Entry {
    slot: usize,
    msg: Range<usize>,
    sig: [u8; 64],
    keys: Candidates,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Free,
    Waiting,
    /// The key that verified, or `None`: invalid.
    Done(Option<[u8; 32]>),
    /// Its submitter went away before the answer; freed once the batch is verified.
    Abandoned,
}

impl Verifier {
    /// Verify `sig` over `msg` with the first of `keys` that accepts it; returns that key.
    pub async fn verify(
        &self,
        mode: SignatureVerification,
        keys: Candidates,
        msg: &[u8],
        sig: &[u8; 64],
    ) -> Option<[u8; 32]> {
        if mode == SignatureVerification::Single
            || cfg!(feature = "fuzzing")
            || msg.len() > MAX_BATCH_MESSAGE
            || keys.is_empty()
            || self.backing_off()
        {
            return self.single(&keys, msg, sig);
        }
        let (slot, lead, full) = {
            let mut st = self.state.borrow_mut();
            let slot = st.free.pop().unwrap_or_else(|| {
                st.slots.push(Slot::Free);
                st.slots.len() - 1
            });
            st.slots[slot] = Slot::Waiting;
            let start = st.arena.len();
            st.arena.extend_from_slice(msg);
            let end = st.arena.len();
            st.entries.push(Entry {
                slot,
                msg: start..end,
                sig: *sig,
                keys,
            });
            let lead = st.leader.is_none();
            if lead {
                st.leader = Some(slot);
            }
            (slot, lead, st.entries.len() >= MAX_BATCH)
        };
        let mut waiter = Waiter {
            v: self,
            slot,
            answered: false,
        };
        if full {
            self.run_batch();
        } else if lead {
            // Let the other connections that are ready in this turn reach step 14.
            futures_lite::future::yield_now().await;
            if self.state.borrow().slots[slot] == Slot::Waiting {
                self.run_batch();
            }
        }
        loop {
            if let Some(r) = self.take(slot) {
                waiter.answered = true;
                return r;
            }
            let listener = self.done.listen();
            if let Some(r) = self.take(slot) {
                waiter.answered = true;
                return r;
            }
            listener.await;
        }
    }

    fn backing_off(&self) -> bool {
        match self.single_until.get() {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                self.single_until.set(None);
                false
            }
            None => false,
        }
    }

    /// Ring, each candidate key in turn.
    fn single(&self, keys: &[[u8; 32]], msg: &[u8], sig: &[u8; 64]) -> Option<[u8; 32]> {
        bump(&self.stats.single, 1);
        keys.iter()
            .find(|k| super::checks::ed25519_verify(k, msg, sig))
            .copied()
    }

    /// The answer of `slot` if it has one; frees the slot.
    fn take(&self, slot: usize) -> Option<Option<[u8; 32]>> {
        let mut st = self.state.borrow_mut();
        match st.slots[slot] {
            Slot::Done(r) => {
                st.slots[slot] = Slot::Free;
                st.free.push(slot);
                Some(r)
            }
            _ => None,
        }
    }

    /// Verify every pending submission and answer them.
    fn run_batch(&self) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        st.leader = None;
        let n = st.entries.len();
        // Which entries the equation holds (bit i: entries[i]); the others go to ring.
        let mut in_equation = 0u32;
        if n >= 2 {
            st.equation.clear();
            for (i, e) in st.entries.iter().enumerate() {
                let Some(a) = st.keys.point(&e.keys[0]) else {
                    continue;
                };
                let mut z = [0u8; 16];
                st.rng.fill(&mut z);
                if st.equation.push(
                    &e.keys[0],
                    a,
                    &st.arena[e.msg.clone()],
                    &e.sig,
                    u128::from_le_bytes(z),
                ) {
                    in_equation |= 1 << i;
                }
            }
            if st.equation.len() < 2 {
                in_equation = 0;
            }
        }
        let batch_ok = if in_equation == 0 {
            false
        } else {
            bump(&self.stats.batches, 1);
            bump(&self.stats.batched, u64::from(in_equation.count_ones()));
            let ok = st.equation.holds();
            if !ok {
                bump(&self.stats.failed_batches, 1);
                self.single_until
                    .set(Some(Instant::now() + FAILED_BATCH_BACKOFF));
            }
            ok
        };
        for (i, e) in st.entries.iter().enumerate() {
            let answer = if batch_ok && in_equation & (1 << i) != 0 {
                Some(e.keys[0])
            } else {
                self.single(&e.keys, &st.arena[e.msg.clone()], &e.sig)
            };
            match st.slots[e.slot] {
                Slot::Abandoned => {
                    st.slots[e.slot] = Slot::Free;
                    st.free.push(e.slot);
                }
                _ => st.slots[e.slot] = Slot::Done(answer),
            }
        }
        st.entries.clear();
        st.arena.clear();
        if st.arena.capacity() > MAX_BATCH * MAX_BATCH_MESSAGE {
            st.arena.shrink_to(MAX_BATCH * MAX_BATCH_MESSAGE);
        }
        drop(guard);
        self.done.notify(usize::MAX);
    }
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// A submission whose request may be dropped while it waits (connection closed, kill switch):
/// its slot is released, and if it was to verify the batch, the batch is verified now so the
/// others still get their answer.
struct Waiter<'v> {
    v: &'v Verifier,
    slot: usize,
    answered: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let leading = {
            let mut st = self.v.state.borrow_mut();
            match st.slots[self.slot] {
                Slot::Waiting if st.leader == Some(self.slot) => true,
                Slot::Waiting => {
                    st.slots[self.slot] = Slot::Abandoned;
                    false
                }
                _ => false,
            }
        };
        if leading {
            self.v.run_batch();
        }
        let _ = self.v.take(self.slot);
    }
}

#[cfg(test)]
mod tests;
