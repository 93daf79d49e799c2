//! Taking samples and summing them up: median, p99, count.

use std::io;
use std::time::{Duration, Instant};

use crate::harness;

/// How many samples one measurement takes.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Calls made and thrown away before sampling.
    pub warmup: usize,
    /// Stop at this many samples.
    pub max: usize,
    /// Never stop before this many.
    pub min: usize,
    /// Stop once this much time went into the measurement (and `min` is met).
    pub budget: Duration,
}

impl Plan {
    pub const fn new(max: usize, budget_secs: u64) -> Plan {
        Plan {
            warmup: if max >= 50 { 5 } else { 1 },
            max,
            min: if max < 5 { max } else { 5 },
            budget: Duration::from_secs(budget_secs),
        }
    }
}

/// The samples of one measurement.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    sorted: Vec<Duration>,
}

impl Stats {
    pub fn from_samples(mut samples: Vec<Duration>) -> Stats {
        samples.sort_unstable();
        Stats { sorted: samples }
    }

    pub fn n(&self) -> usize {
        self.sorted.len()
    }

    /// The sample at rank `ceil(q * n)` (nearest rank), in microseconds.
    fn quantile_us(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.sorted.len() as f64).ceil() as usize).clamp(1, self.sorted.len());
        self.sorted[rank - 1].as_secs_f64() * 1e6
    }

    pub fn median_us(&self) -> f64 {
        self.quantile_us(0.5)
    }

    pub fn p99_us(&self) -> f64 {
        self.quantile_us(0.99)
    }
}

/// One operation to sample: a name for the watchdog, and a closure that
/// does the operation once and returns how long the part that counts took.
pub struct Op<'a> {
    pub name: String,
    pub run: Box<dyn FnMut() -> io::Result<Duration> + 'a>,
}

impl<'a> Op<'a> {
    pub fn new(name: &str, run: impl FnMut() -> io::Result<Duration> + 'a) -> Op<'a> {
        Op {
            name: name.to_owned(),
            run: Box::new(run),
        }
    }
}

/// Times `f` once.
pub fn timed<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

/// Samples every op of `ops` under `plan`, in chunks taken in turn, so that
/// a measurement and its alternatives see the same background load. Panics
/// on the first error, naming the op.
pub fn measure(plan: Plan, ops: Vec<Op<'_>>) -> Vec<Stats> {
    let mut ops = ops;
    for op in &mut ops {
        harness::step(&format!("warm up: {}", op.name));
        for _ in 0..plan.warmup {
            (op.run)().unwrap_or_else(|e| panic!("{}: {e}", op.name));
            harness::progress();
        }
    }
    let chunk = plan.max.div_ceil(20).max(1);
    let mut samples: Vec<Vec<Duration>> = ops.iter().map(|_| Vec::new()).collect();
    let mut spent = vec![Duration::ZERO; ops.len()];
    let done = |n: usize, spent: Duration| n >= plan.max || (n >= plan.min && spent >= plan.budget);
    while samples.iter().zip(&spent).any(|(s, &t)| !done(s.len(), t)) {
        for (i, op) in ops.iter_mut().enumerate() {
            if done(samples[i].len(), spent[i]) {
                continue;
            }
            harness::step(&op.name);
            for _ in 0..chunk {
                if done(samples[i].len(), spent[i]) {
                    break;
                }
                let start = Instant::now();
                let d = (op.run)().unwrap_or_else(|e| panic!("{}: {e}", op.name));
                spent[i] += start.elapsed();
                samples[i].push(d);
                harness::progress();
            }
        }
    }
    samples.into_iter().map(Stats::from_samples).collect()
}

/// Microseconds for a table: two decimals below 10, one below 100, then
/// whole numbers with thousands separators.
pub fn us(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        thousands(v.round() as u64)
    }
}

/// `12345` as `12,345`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A ratio of medians: two significant digits below 10.
pub fn ratio(num: f64, den: f64) -> String {
    let r = num / den;
    if !r.is_finite() {
        "-".into()
    } else if r < 0.1 {
        format!("{r:.3}")
    } else if r < 10.0 {
        format!("{r:.2}")
    } else {
        thousands(r.round() as u64)
    }
}
