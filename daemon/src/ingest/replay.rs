//! Requests in flight per nonce key (CONTRACT.md §3.5 "In flight"): a second request with the
//! same `(ts, nonce)` waits until the first one's outcome is on disk, then runs step 15 again.
//! Lives on the event loop; no locks.

use std::cell::RefCell;
use std::collections::HashMap;

use futures_channel::oneshot;

#[derive(Default)]
pub struct InFlight {
    map: RefCell<HashMap<[u8; 24], Vec<oneshot::Sender<()>>>>,
}

/// Ownership of a nonce key until dropped; waiters are released on drop.
pub struct Claim<'a> {
    owner: &'a InFlight,
    key: [u8; 24],
}

impl InFlight {
    /// Take the key, waiting while another request holds it.
    pub async fn claim(&self, key: [u8; 24]) -> Claim<'_> {
        loop {
            let rx = {
                let mut map = self.map.borrow_mut();
                match map.get_mut(&key) {
                    None => {
                        map.insert(key, Vec::new());
                        return Claim { owner: self, key };
                    }
                    Some(waiters) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        rx
                    }
                }
            };
            let _ = rx.await;
        }
    }

    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(waiters) = self.owner.map.borrow_mut().remove(&self.key) {
            for w in waiters {
                let _ = w.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn second_claim_waits_for_the_first() {
        let ex = smol::LocalExecutor::new();
        let inflight = Rc::new(InFlight::default());
        let order = Rc::new(Cell::new(0u32));
        smol::block_on(ex.run(async {
            let first = inflight.claim([1; 24]).await;
            let (i2, o2) = (Rc::clone(&inflight), Rc::clone(&order));
            let second = ex.spawn(async move {
                let _c = i2.claim([1; 24]).await;
                o2.set(o2.get() * 10 + 2);
            });
            // A different key is not blocked.
            drop(inflight.claim([2; 24]).await);
            smol::future::yield_now().await;
            assert_eq!(order.get(), 0, "the second claim must wait");
            order.set(1);
            drop(first);
            second.await;
            assert_eq!(order.get(), 12);
            assert!(inflight.is_empty());
        }));
    }
}
