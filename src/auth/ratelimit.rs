//! Per-license request rate limits and the per-source limit on failed logins (both GCRA: a
//! token bucket kept as one timestamp per key), answered with 429 and a `Retry-After` by the
//! API.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Failed logins a source may make at once before it is throttled.
pub const LOGIN_FAILURE_BURST: u32 = 10;
/// After the burst, one more failed login per this interval.
pub const LOGIN_FAILURE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a license that logged in from a source keeps passing that source's throttle.
const KNOWN_GOOD_FOR: Duration = Duration::from_secs(3600);
/// Licenses remembered per source (customers behind one NAT address).
const KNOWN_GOOD_MAX: usize = 64;

/// Throttles guessing of license ids: every failed login (an unknown id, or a username that
/// is not the password) costs the source address one token; a source without tokens gets 429
/// before its credentials are even looked at. Throttled attempts cost nothing, so an
/// attacker who keeps trying is held at one guess per [`LOGIN_FAILURE_INTERVAL`], and the
/// throttle ends as soon as the bucket refills. Licenses that logged in successfully from
/// the source recently pass it anyway: customers sharing an address (NAT, a proxy) with
/// someone guessing keep pulling, and a guesser learns nothing new from it (passing needs a
/// valid id).
#[derive(Default)]
pub struct LoginThrottle {
    sources: Mutex<HashMap<IpAddr, Source>>,
}

#[derive(Default)]
struct Source {
    /// Theoretical arrival time of the next failure.
    tat: Option<Instant>,
    /// Whether this throttling episode was logged (one line per source, not per attempt).
    logged: bool,
    /// Fingerprints that logged in from here, with when.
    known_good: Vec<(String, Instant)>,
}

/// The key of a source: the address, or for IPv6 its /64 (one host often owns a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl LoginThrottle {
    /// Whether `source` may try to log in now as the license whose fingerprint
    /// `fingerprint` computes; otherwise how long to wait.
    pub fn admit(
        &self,
        source: IpAddr,
        fingerprint: impl FnOnce() -> String,
        now: Instant,
    ) -> Result<(), Duration> {
        let key = source_key(source);
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = map.get_mut(&key) else {
            return Ok(());
        };
        let tolerance = LOGIN_FAILURE_INTERVAL * LOGIN_FAILURE_BURST.saturating_sub(1);
        let allow_at = s.tat.and_then(|t| t.checked_sub(tolerance)).unwrap_or(now);
        if now >= allow_at {
            // The episode (and its log line) ends when the bucket is full again, not when
            // one attempt gets through: a guesser held at one a second is logged once.
            if s.tat.is_none_or(|t| t <= now) {
                s.logged = false;
            }
            return Ok(());
        }
        let fp = fingerprint();
        if s.known_good
            .iter()
            .any(|(f, at)| *f == fp && now.duration_since(*at) < KNOWN_GOOD_FOR)
        {
            return Ok(());
        }
        let wait = allow_at - now;
        if !s.logged {
            s.logged = true;
            tracing::warn!(
                source = %key,
                retry_after_s = wait.as_secs().max(1),
                "too many failed logins from this source: throttled"
            );
        }
        Err(wait)
    }

    /// Counts a failed login from `source`.
    pub fn failed(&self, source: IpAddr, now: Instant) {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut map, now);
        let s = map.entry(source_key(source)).or_default();
        s.tat = Some(s.tat.unwrap_or(now).max(now) + LOGIN_FAILURE_INTERVAL);
    }

    /// Remembers that the license `fingerprint` logged in from `source`.
    pub fn succeeded(&self, source: IpAddr, fingerprint: &str, now: Instant) {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut map, now);
        let s = map.entry(source_key(source)).or_default();
        s.known_good
            .retain(|(f, at)| f != fingerprint && now.duration_since(*at) < KNOWN_GOOD_FOR);
        if s.known_good.len() >= KNOWN_GOOD_MAX {
            s.known_good.remove(0);
        }
        s.known_good.push((fingerprint.to_string(), now));
    }
}

/// Bounds the memory: past 100,000 sources, those whose bucket is full again and who have
/// no recent known-good license carry no information and go.
fn prune(map: &mut HashMap<IpAddr, Source>, now: Instant) {
    if map.len() > 100_000 {
        map.retain(|_, s| {
            s.tat.is_some_and(|t| t > now)
                || s.known_good
                    .iter()
                    .any(|(_, at)| now.duration_since(*at) < KNOWN_GOOD_FOR)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_logins_throttle_the_source_not_its_known_good_licenses() {
        let t = LoginThrottle::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let now = Instant::now();
        let fp = || "guess".to_string();
        // A customer logs in before anyone fails from the same address.
        t.succeeded(a, "early", now);
        t.failed(a, now);
        t.succeeded(a, "good", now);
        for _ in 1..LOGIN_FAILURE_BURST {
            assert!(t.admit(a, fp, now).is_ok());
            t.failed(a, now);
        }
        let wait = t.admit(a, fp, now).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= LOGIN_FAILURE_INTERVAL,
            "{wait:?}"
        );
        // Throttled attempts cost nothing: the wait does not grow.
        assert_eq!(t.admit(a, fp, now).unwrap_err(), wait);
        assert!(
            t.admit(a, || "good".into(), now).is_ok(),
            "known good passes"
        );
        assert!(t.admit(a, || "early".into(), now).is_ok());
        assert!(t.admit(a, || "late".into(), now).is_err());
        assert!(t.admit(b, fp, now).is_ok(), "sources are independent");
        assert!(t.admit(a, fp, now + wait).is_ok(), "over after the wait");
        // IPv6 sources count by /64.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..LOGIN_FAILURE_BURST {
            t.failed(v6a, now);
        }
        assert!(t.admit(v6b, fp, now).is_err());
    }

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
