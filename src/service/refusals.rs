//! How many refusals reach the log: a caller must not be able to fill the
//! disk by asking for what it may not have.
//!
//! Callers are told apart by uid (all the threads and processes of one
//! user share an allowance). Each caller has a token bucket: a burst of
//! [`BURST`] lines, then one more every [`REFILL`]. The first refusal of
//! each kind (operation and errno) a caller meets is logged whatever its
//! bucket holds, so the reason behind any errno a user reports is in the
//! log. What is held back is counted and said in one line before the
//! caller's next logged refusal.
//!
//! The table is split in [`SHARDS`] shards, each under its own lock held
//! only for a lookup and a few additions, and holds at most
//! [`CALLERS_PER_SHARD`] callers per shard: when a shard is full, the
//! caller it has not heard from the longest is forgotten (and its count of
//! held-back lines reported then).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lines a caller may have logged at once.
pub const BURST: u32 = 20;
/// One more line is allowed after each such interval.
pub const REFILL: Duration = Duration::from_secs(1);
/// Kinds (operation, errno) remembered per caller; more kinds than that
/// count against the bucket like repeats.
pub const KINDS_PER_CALLER: usize = 32;
/// Shards of the table.
pub const SHARDS: usize = 16;
/// Callers per shard.
pub const CALLERS_PER_SHARD: usize = 64;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Log it.
    pub log: bool,
    /// Refusals of this caller held back before this one (to say so first,
    /// when `log`); 0 otherwise.
    pub held_back: u64,
    /// A caller forgotten to make room, with refusals of its held back
    /// since its last logged line.
    pub forgotten: Option<(u32, u64)>,
}

#[derive(Debug)]
struct CallerLog {
    tokens: u32,
    /// When the bucket last gained a token (or was made).
    refilled: Instant,
    last_seen: Instant,
    kinds: Vec<(&'static str, i32)>,
    held_back: u64,
}

/// The table of callers.
#[derive(Debug)]
pub struct Refusals {
    shards: Vec<Mutex<HashMap<u32, CallerLog>>>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Refusals {
    /// Judges one refusal of `op` with `errno` to caller `uid` at `now`.
    pub fn judge(&self, uid: u32, op: &'static str, errno: i32, now: Instant) -> Verdict {
        let mut shard = self.shards[uid as usize % SHARDS].lock();
        let mut forgotten = None;
        if !shard.contains_key(&uid) && shard.len() >= CALLERS_PER_SHARD {
            let oldest = shard
                .iter()
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(&k, _)| k);
            if let Some(old) = oldest.and_then(|k| shard.remove(&k).map(|c| (k, c))) {
                forgotten = (old.1.held_back > 0).then_some((old.0, old.1.held_back));
            }
        }
        let caller = shard.entry(uid).or_insert_with(|| CallerLog {
            tokens: BURST,
            refilled: now,
            last_seen: now,
            kinds: Vec::new(),
            held_back: 0,
        });
        caller.last_seen = caller.last_seen.max(now);
        let since = now.saturating_duration_since(caller.refilled);
        let gained = (since.as_nanos() / REFILL.as_nanos()).min(BURST as u128) as u32;
        if gained > 0 {
            caller.tokens = (caller.tokens + gained).min(BURST);
            caller.refilled = if caller.tokens == BURST {
                now
            } else {
                caller.refilled + REFILL * gained
            };
        }
        let new_kind = !caller.kinds.contains(&(op, errno));
        let first = new_kind && caller.kinds.len() < KINDS_PER_CALLER;
        if first {
            caller.kinds.push((op, errno));
        }
        let log = if caller.tokens > 0 {
            caller.tokens -= 1;
            true
        } else {
            first
        };
        let held_back = if log {
            std::mem::take(&mut caller.held_back)
        } else {
            caller.held_back += 1;
            0
        };
        Verdict {
            log,
            held_back,
            forgotten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(r: &Refusals, uid: u32, op: &'static str, errno: i32, now: Instant) -> bool {
        r.judge(uid, op, errno, now).log
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_and_the_refill() {
        let r = Refusals::default();
        let t0 = Instant::now();
        // 1,000 refusals at the same instant: the burst, nothing more.
        let n = (0..1000)
            .filter(|_| logged(&r, 1000, "open", libc::EPERM, t0))
            .count();
        assert_eq!(n, BURST as usize);
        // Ten intervals later: ten more lines, and the first says how many
        // were held back.
        let t1 = t0 + REFILL * 10;
        let first = r.judge(1000, "open", libc::EPERM, t1);
        assert!(first.log);
        assert_eq!(first.held_back, 1000 - BURST as u64);
        let more = (0..100)
            .filter(|_| logged(&r, 1000, "open", libc::EPERM, t1))
            .count();
        assert_eq!(more, 9);
        // A long quiet spell refills the bucket to the burst, not beyond.
        let t2 = t1 + REFILL * 1000;
        let n = (0..1000)
            .filter(|_| logged(&r, 1000, "open", libc::EPERM, t2))
            .count();
        assert_eq!(n, BURST as usize);
    }

    #[test]
    fn the_first_refusal_of_each_kind_is_always_logged() {
        let r = Refusals::default();
        let t = Instant::now();
        for _ in 0..500 {
            logged(&r, 7, "open", libc::EPERM, t);
        }
        assert!(logged(&r, 7, "mkdir", libc::EPERM, t));
        assert!(logged(&r, 7, "open", libc::ENOENT, t));
        assert!(!logged(&r, 7, "mkdir", libc::EPERM, t));
        assert!(!logged(&r, 7, "open", libc::EPERM, t));
    }

    #[test]
    fn callers_have_their_own_allowance() {
        let r = Refusals::default();
        let t = Instant::now();
        for _ in 0..500 {
            logged(&r, 65534, "write", libc::EPERM, t);
        }
        let n = (0..BURST)
            .filter(|_| logged(&r, 0, "write", libc::EPERM, t))
            .count();
        assert_eq!(n, BURST as usize, "root is not silenced by another user");
    }

    #[test]
    fn the_table_stays_bounded_and_reports_whom_it_forgets() {
        let r = Refusals::default();
        let t0 = Instant::now();
        // uid 3 is held back, then goes quiet.
        for _ in 0..(BURST + 5) {
            logged(&r, 3, "open", libc::EPERM, t0);
        }
        let mut forgotten = Vec::new();
        for i in 1..=(SHARDS * CALLERS_PER_SHARD * 3) as u32 {
            let uid = 3 + i * SHARDS as u32;
            let v = r.judge(
                uid,
                "open",
                libc::EPERM,
                t0 + Duration::from_micros(i as u64),
            );
            assert!(v.log, "a new caller's first refusal is logged");
            forgotten.extend(v.forgotten);
        }
        assert_eq!(forgotten, [(3, 5)]);
        for shard in &r.shards {
            assert!(shard.lock().len() <= CALLERS_PER_SHARD);
        }
    }

    #[test]
    fn many_kinds_do_not_grow_a_caller_without_bound() {
        let r = Refusals::default();
        let t = Instant::now();
        let logged_count = (0..10_000)
            .filter(|&e| logged(&r, 9, "write", e, t))
            .count();
        // Every line is a first of its kind until the kinds run out; the
        // burst is spent on the first of them.
        assert_eq!(logged_count, KINDS_PER_CALLER);
        assert!(r.shards[9 % SHARDS].lock()[&9].kinds.len() <= KINDS_PER_CALLER);
    }
}
