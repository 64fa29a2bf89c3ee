//! Per-license request rate limits (GCRA: a token bucket kept as one timestamp per key),
//! answered with 429 and a `Retry-After` by the API.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

#[derive(Default)]
pub struct Limiter {
    /// Theoretical arrival time per key.
    tat: Mutex<HashMap<String, Instant>>,
}

impl Limiter {
    /// Admits one request for `key`, or says how long to wait.
    pub fn check(&self, key: &str, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let interval = Duration::from_secs_f64(1.0 / limit.per_second);
        let tolerance = interval * limit.burst.saturating_sub(1);
        let mut map = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // Keys whose bucket is full again carry no information: drop them.
            map.retain(|_, t| *t > now);
        }
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let allow_at = tat.checked_sub(tolerance).unwrap_or(now);
        if now < allow_at {
            return Err(allow_at - now);
        }
        map.insert(key.to_string(), tat + interval);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let l = Limiter::default();
        let lim = RateLimit {
            per_second: 10.0,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", lim, t0).is_ok());
        }
        let wait = l.check("a", lim, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l.check("b", lim, t0).is_ok(), "keys are independent");
        assert!(l.check("a", lim, t0 + Duration::from_millis(101)).is_ok());
    }
}
