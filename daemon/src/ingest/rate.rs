//! Per-operator rate limit (CONTRACT.md §3.7): a fixed wall-clock window of one minute,
//! `floor(now / 60)`. Every request that reaches the check counts, including refused ones.
//! Kept in process memory on the event loop; a restart resets the current window.

use std::collections::HashMap;

#[derive(Default)]
pub struct RateLimiter {
    windows: HashMap<String, (u64, u64)>,
}

impl RateLimiter {
    /// Count one request for `key` at `now` (Unix seconds). `Err(retry_after)` when the
    /// window's count exceeds `limit`, with the seconds until the next window.
    pub fn hit(&mut self, key: &str, now: u64, limit: u64) -> Result<(), u64> {
        let window = now / 60;
        let count = match self.windows.get_mut(key) {
            Some((w, c)) if *w == window => {
                *c += 1;
                *c
            }
            Some(slot) => {
                *slot = (window, 1);
                1
            }
            None => {
                // Forget stale operators before growing (keys are mapped operators only).
                if self.windows.len() >= 4096 {
                    self.windows.retain(|_, (w, _)| *w == window);
                }
                self.windows.insert(key.to_owned(), (window, 1));
                1
            }
        };
        if count > limit {
            Err(60 - now % 60)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_window() {
        let mut r = RateLimiter::default();
        let t = 1_772_107_200; // a window boundary
        assert!(r.hit("op", t, 2).is_ok());
        assert!(r.hit("op", t + 1, 2).is_ok());
        assert_eq!(r.hit("op", t + 15, 2), Err(45));
        assert!(r.hit("other", t + 15, 2).is_ok());
        // Refused requests count too; the next window starts fresh.
        assert!(r.hit("op", t + 59, 2).is_err());
        assert!(r.hit("op", t + 60, 2).is_ok());
    }
}
