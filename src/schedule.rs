//! When a job runs in the daemon: a 5-field cron expression (in UTC or a named time zone) or a fixed
//! interval. Pure: the daemon asks for the next due time after a given instant.

use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use jiff::Timestamp;
use jiff::tz::TimeZone;

#[derive(Debug, Clone)]
pub enum Schedule {
    Cron {
        expression: String,
        cron: Box<Cron>,
        timezone: TimeZone,
    },
    Interval(Duration),
}

impl Schedule {
    /// A standard 5-field cron expression (minute hour day-of-month month day-of-week) or an alias
    /// such as `@hourly`, evaluated in `timezone` (an IANA name) or UTC.
    pub fn cron(expression: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let fields = expression.split_whitespace().count();
        if !expression.trim_start().starts_with('@') && fields != 5 {
            return Err(format!(
                "schedule \"{expression}\" has {fields} fields; use the 5 of cron: \
                 minute hour day-of-month month day-of-week, e.g. \"*/30 * * * *\""
            ));
        }
        let cron = Cron::from_str(expression).map_err(|e| {
            format!("schedule \"{expression}\" is not a valid cron expression: {e}")
        })?;
        let timezone = match timezone {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name)
                .map_err(|e| format!("timezone \"{name}\" is not a known IANA time zone: {e}"))?,
        };
        Ok(Schedule::Cron {
            expression: expression.to_string(),
            cron: Box::new(cron),
            timezone,
        })
    }

    /// The first due time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Timestamp {
        match self {
            Schedule::Interval(d) => after + jiff::SignedDuration::try_from(*d).unwrap_or_default(),
            Schedule::Cron { cron, timezone, .. } => {
                let zoned = after.to_zoned(timezone.clone());
                match cron.find_next_occurrence(&zoned, false) {
                    Ok(next) => next.timestamp(),
                    // An expression that never matches again (e.g. Feb 30): never due.
                    Err(_) => Timestamp::MAX,
                }
            }
        }
    }

    /// The usual time between two runs: the interval, or the gap between the cron expression's
    /// next two times.
    pub fn nominal_interval(&self) -> Duration {
        match self {
            Schedule::Interval(d) => *d,
            Schedule::Cron { .. } => {
                let first = self.next_after(Timestamp::now());
                let second = self.next_after(first);
                second.duration_since(first).try_into().unwrap_or_default()
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Schedule::Interval(d) => format!(
                "every {:#}",
                jiff::SignedDuration::try_from(*d).unwrap_or_default()
            ),
            Schedule::Cron {
                expression,
                timezone,
                ..
            } => format!(
                "cron \"{expression}\" ({})",
                timezone.iana_name().unwrap_or("UTC")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn cron_runs_at_the_next_matching_minute_in_utc() {
        let s = Schedule::cron("*/30 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(ts("2026-11-27T07:10:05Z")),
            ts("2026-11-27T07:30:00Z")
        );
        assert_eq!(
            s.next_after(ts("2026-11-27T07:30:00Z")),
            ts("2026-11-27T08:00:00Z"),
            "strictly after"
        );
    }

    #[test]
    fn cron_honours_the_time_zone() {
        let s = Schedule::cron("0 3 * * *", Some("Europe/Paris")).unwrap();
        // 03:00 in Paris in November (UTC+1) is 02:00 UTC.
        assert_eq!(
            s.next_after(ts("2026-11-27T07:00:00Z")),
            ts("2026-11-28T02:00:00Z")
        );
    }

    #[test]
    fn six_field_and_garbage_expressions_are_rejected() {
        assert!(
            Schedule::cron("0 */5 * * * *", None)
                .unwrap_err()
                .contains("6 fields")
        );
        assert!(Schedule::cron("61 * * * *", None).is_err());
        assert!(Schedule::cron("* * * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn interval_adds_its_duration() {
        let s = Schedule::Interval(Duration::from_secs(90));
        assert_eq!(
            s.next_after(ts("2026-11-27T07:00:00Z")),
            ts("2026-11-27T07:01:30Z")
        );
    }
}
