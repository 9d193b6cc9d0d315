//! The crate's clock: wall-clock time in unix milliseconds (what records,
//! generations and statuses carry), and UTC timestamps for people
//! (`2026-11-25T11:16:20Z`) and back.

use anyhow::{bail, Result};
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in unix milliseconds (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn format_unix_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// `20261125T111620Z`: a UTC time for file names.
pub fn format_unix_ms_compact(ms: u64) -> String {
    format_unix_ms(ms).replace(['-', ':'], "")
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (or a space for `T`, `Z` optional; UTC),
/// `YYYY-MM-DD`, or `@UNIX_SECONDS`, to unix milliseconds.
pub fn parse_to_unix_ms(s: &str) -> Result<u64> {
    let s = s.trim();
    if let Some(secs) = s.strip_prefix('@') {
        return Ok(secs.parse::<u64>()? * 1000);
    }
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        bail!("cannot read the time {s:?}: use YYYY-MM-DDTHH:MM:SSZ (UTC) or @UNIX_SECONDS");
    }
    let (y, mo, da): (i64, u32, u32) = (d[0].parse()?, d[1].parse()?, d[2].parse()?);
    let (h, mi, se): (i64, i64, i64) = (t[0].parse()?, t[1].parse()?, t[2].parse()?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 || y < 1970 {
        bail!("{s:?} is not a valid UTC time");
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    Ok(secs as u64 * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_ms(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(parse_to_unix_ms("2026-11-18T11:06:40Z").unwrap(), 1_795_000_000_000);
        assert_eq!(parse_to_unix_ms("2000-02-29 00:00:00").unwrap(), 951_782_400_000);
        assert_eq!(parse_to_unix_ms("@12").unwrap(), 12_000);
        assert!(parse_to_unix_ms("yesterday").is_err());
        assert!(parse_to_unix_ms("2026-13-01").is_err());
    }
}
