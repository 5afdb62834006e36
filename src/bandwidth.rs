//! Bandwidth limits on source downloads: `[transfer] max_bandwidth` for the whole process and
//! `max_bandwidth` per job, each a fixed rate or a daily timetable.
//!
//! The limit applies where the bytes enter: the source download. Every target receives exactly
//! what was read, so limiting the one read limits all the uploads fed from it, and no target
//! falls behind another.
//!
//! A [`Limiter`] outlives configurations: the daemon keeps one per scope and gives it the new
//! [`Limit`] on SIGHUP, so transfers in flight slow down or speed up instead of being restarted.
//! The rate in force is looked up at every chunk and again at least every [`RECHECK`] while a
//! chunk waits, which is how a new limit or a timetable boundary takes effect within that time
//! even at the slowest rates.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::civil::Time;
use jiff::tz::TimeZone;

/// A rate in bytes per second; `None` is no limit.
pub type Rate = Option<u64>;

/// What a scope is limited to.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    Fixed(Rate),
    /// From each time of day (in `timezone`) on, until the next entry (wrapping at midnight).
    Timetable {
        entries: Vec<(Time, Rate)>,
        timezone: TimeZone,
    },
}

impl Limit {
    pub const NONE: Limit = Limit::Fixed(None);

    /// The rate in force at `now`.
    pub fn rate_at(&self, now: jiff::Timestamp) -> Rate {
        match self {
            Limit::Fixed(rate) => *rate,
            Limit::Timetable { entries, timezone } => {
                let time = now.to_zoned(timezone.clone()).time();
                // Sorted by time: the last entry not after `time`, else yesterday's last one.
                entries
                    .iter()
                    .rev()
                    .find(|(from, _)| *from <= time)
                    .or(entries.last())
                    .and_then(|(_, rate)| *rate)
            }
        }
    }
}

/// Paces the bytes of every transfer in one scope (the process, or one job).
pub struct Limiter {
    inner: Mutex<Pacing>,
    /// Called with the rate in force whenever it changes (the limit gauge).
    on_change: Box<dyn Fn(Rate) + Send + Sync>,
}

struct Pacing {
    limit: Limit,
    /// The rate last seen in force, to report changes.
    rate: Rate,
    /// When the bytes granted so far have been paid for at the rate in force.
    next_free: Instant,
}

/// How often a waiting chunk looks at the rate in force again.
pub const RECHECK: Duration = Duration::from_millis(100);

/// The lowest rate accepted: below it one chunk would wait for minutes.
const MIN_RATE: u64 = 1024;

/// The most a pause may carry over from an idle period: without it, a limiter idle for an hour
/// would let the next hour's worth of bytes through at full speed.
const MAX_BURST: Duration = Duration::from_millis(250);

impl Limiter {
    pub fn new(limit: Limit, on_change: impl Fn(Rate) + Send + Sync + 'static) -> Arc<Limiter> {
        let rate = limit.rate_at(jiff::Timestamp::now());
        on_change(rate);
        Arc::new(Limiter {
            inner: Mutex::new(Pacing {
                limit,
                rate,
                next_free: Instant::now(),
            }),
            on_change: Box::new(on_change),
        })
    }

    /// Replaces the limit (a reload); transfers in flight follow from their next chunk.
    pub fn set(&self, limit: Limit) {
        let mut p = self.inner.lock().expect("limiter lock");
        p.limit = limit;
        self.refresh(&mut p);
    }

    fn refresh(&self, p: &mut Pacing) -> Rate {
        let rate = p.limit.rate_at(jiff::Timestamp::now());
        if rate != p.rate {
            p.rate = rate;
            (self.on_change)(rate);
        }
        rate
    }

    /// How long the caller must wait before passing on `bytes` more, at the rate in force
    /// (returned too).
    fn reserve(&self, bytes: u64) -> (Duration, Rate) {
        let mut p = self.inner.lock().expect("limiter lock");
        let now = Instant::now();
        let Some(rate) = self.refresh(&mut p) else {
            p.next_free = now;
            return (Duration::ZERO, None);
        };
        let start = p.next_free.max(now.checked_sub(MAX_BURST).unwrap_or(now));
        p.next_free = start + Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
        (p.next_free.saturating_duration_since(now), Some(rate))
    }

    /// Waits until `bytes` more may pass. When the rate in force changes during the wait (a
    /// reload, a timetable boundary), the rest of the wait is dropped and pacing starts afresh at
    /// the new rate.
    pub async fn take(&self, bytes: u64) {
        let (mut wait, rate) = self.reserve(bytes);
        while !wait.is_zero() {
            let step = wait.min(RECHECK);
            tokio::time::sleep(step).await;
            wait -= step;
            let mut p = self.inner.lock().expect("limiter lock");
            if self.refresh(&mut p) != rate {
                p.next_free = Instant::now();
                return;
            }
        }
    }
}

/// The limiters a transfer passes through: the process's and its job's.
#[derive(Clone, Default)]
pub struct Limiters(pub Vec<Arc<Limiter>>);

impl Limiters {
    pub async fn take(&self, bytes: u64) {
        for l in &self.0 {
            l.take(bytes).await;
        }
    }
}

/// Told the rate in force of a scope ("" for the process) whenever it changes, and [`GONE`]
/// when the scope no longer exists.
type Report = Arc<dyn Fn(&str, Rate) + Send + Sync>;

/// Reported for a job removed from the configuration: its gauge goes.
pub const GONE: Rate = Some(0);

/// The limiters of one process: the process's own and one per job, kept across reloads.
pub struct Registry {
    process: Arc<Limiter>,
    jobs: Mutex<std::collections::HashMap<String, Arc<Limiter>>>,
    /// Reports the rate in force of a scope ("" for the process).
    report: Report,
}

impl Registry {
    pub fn new(process: Limit, report: impl Fn(&str, Rate) + Send + Sync + 'static) -> Registry {
        let report: Report = Arc::new(report);
        let r = report.clone();
        Registry {
            process: Limiter::new(process, move |rate| r("", rate)),
            jobs: Mutex::default(),
            report,
        }
    }

    /// Gives every scope its limit from a (re)loaded configuration. A job no longer configured
    /// loses its limiter (a run of it still in flight keeps pacing with the one it holds) and its
    /// gauge.
    pub fn configure<'a>(&self, process: Limit, jobs: impl IntoIterator<Item = (&'a str, Limit)>) {
        self.process.set(process);
        let jobs: Vec<(&str, Limit)> = jobs.into_iter().collect();
        let mut known = self.jobs.lock().expect("limiters lock");
        known.retain(|name, _| {
            let keep = jobs.iter().any(|(j, _)| j == name);
            if !keep {
                (self.report)(name, GONE);
            }
            keep
        });
        for (job, limit) in jobs {
            match known.get(job) {
                Some(l) => l.set(limit),
                None => {
                    let report = self.report.clone();
                    let name = job.to_string();
                    known.insert(
                        job.to_string(),
                        Limiter::new(limit, move |rate| report(&name, rate)),
                    );
                }
            }
        }
    }

    /// Looks at every scope's rate in force again, so that the gauges are current at a
    /// timetable boundary even when nothing is copied.
    pub fn refresh(&self) {
        let limiters: Vec<Arc<Limiter>> = std::iter::once(self.process.clone())
            .chain(self.jobs.lock().expect("limiters lock").values().cloned())
            .collect();
        for l in limiters {
            let mut p = l.inner.lock().expect("limiter lock");
            l.refresh(&mut p);
        }
    }

    /// The limiters `job`'s transfers pass through.
    pub fn for_job(&self, job: &str) -> Limiters {
        let mut all = vec![self.process.clone()];
        all.extend(self.jobs.lock().expect("limiters lock").get(job).cloned());
        Limiters(all)
    }
}

/// `"100MiB/s"`, `"800Mbit/s"` or `"off"`: a rate.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || {
        format!(
            "\"{s}\" is not a rate: use e.g. \"100MiB/s\", \"20MB/s\", \"800Mbit/s\" or \"off\""
        )
    };
    let amount = s.strip_suffix("/s").ok_or_else(bad)?.trim();
    let split = amount
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(amount.len());
    let number: f64 = amount[..split].trim().parse().map_err(|_| bad())?;
    let unit = amount[split..].trim();
    let factor: f64 = match unit {
        "B" | "" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        _ => return Err(bad()),
    };
    let rate = (number * factor).round();
    if rate.is_nan() || rate < MIN_RATE as f64 {
        return Err(format!(
            "\"{s}\" is below the lowest limit, 1KiB/s: say \"off\" for no limit"
        ));
    }
    Ok(Some(rate as u64))
}

/// A timetable `{ "08:00" = "20MiB/s", "20:00" = "off" }`, in `timezone`.
pub fn parse_timetable(entries: &[(String, String)], timezone: TimeZone) -> Result<Limit, String> {
    if entries.is_empty() {
        return Err("a timetable needs at least one \"HH:MM\" = rate entry".into());
    }
    let mut parsed = Vec::new();
    for (at, rate) in entries {
        let time = Time::strptime("%H:%M", at.trim())
            .map_err(|_| format!("\"{at}\" is not a time of day: use \"HH:MM\", e.g. \"08:00\""))?;
        parsed.push((time, parse_rate(rate)?));
    }
    parsed.sort_by_key(|(t, _)| *t);
    if let Some(w) = parsed.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!(
            "the timetable names {} twice",
            w[0].0.strftime("%H:%M")
        ));
    }
    Ok(Limit::Timetable {
        entries: parsed,
        timezone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_bytes_and_bits() {
        assert_eq!(parse_rate("100MiB/s"), Ok(Some(100 << 20)));
        assert_eq!(parse_rate("20 MB/s"), Ok(Some(20_000_000)));
        assert_eq!(parse_rate("800Mbit/s"), Ok(Some(100_000_000)));
        assert_eq!(parse_rate("off"), Ok(None));
        assert!(parse_rate("100MiB").unwrap_err().contains("not a rate"));
        assert!(
            parse_rate("0MB/s")
                .unwrap_err()
                .contains("below the lowest")
        );
        assert!(parse_rate("1B/s").unwrap_err().contains("below the lowest"));
    }

    #[test]
    fn the_timetable_entry_in_force_wraps_at_midnight() {
        let limit = parse_timetable(
            &[
                ("20:00".into(), "off".into()),
                ("08:00".into(), "20MiB/s".into()),
            ],
            TimeZone::fixed(jiff::tz::offset(2)),
        )
        .unwrap();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        // 08:30 at UTC+2 is 06:30 UTC.
        assert_eq!(limit.rate_at(at("2026-01-01T06:30:00Z")), Some(20 << 20));
        assert_eq!(limit.rate_at(at("2026-01-01T18:00:00Z")), None);
        // 03:00 local: still the evening's "off".
        assert_eq!(limit.rate_at(at("2026-01-01T01:00:00Z")), None);
        assert!(
            parse_timetable(&[("8h".into(), "off".into())], TimeZone::UTC)
                .unwrap_err()
                .contains("HH:MM")
        );
    }

    #[test]
    fn pacing_holds_the_rate_and_a_reload_applies_at_the_next_chunk() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let l = Limiter::new(Limit::Fixed(Some(1_000_000)), move |r| {
            log.lock().unwrap().push(r)
        });
        // 10 chunks of 100 kB at 1 MB/s: the last one may pass after ~1 s.
        let mut wait = Duration::ZERO;
        for _ in 0..10 {
            wait = l.reserve(100_000).0;
        }
        assert!((0.85..=1.0).contains(&wait.as_secs_f64()), "{wait:?}");
        l.set(Limit::NONE);
        assert_eq!(l.reserve(100_000_000), (Duration::ZERO, None));
        assert_eq!(*seen.lock().unwrap(), [Some(1_000_000), None]);
    }
}
