//! Durations and sizes as config files write them: ISO-8601 durations (`PT0.2S`,
//! `P7D`) or short forms (`200ms`, `10m`, `7d`, `1h30m`); sizes with binary or decimal
//! units (`4MiB`, `64MiB`, `10GiB`, `500KB`) or plain byte counts.

use std::time::Duration;

/// Parses a duration; the error says what forms are accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let help = || {
        format!(
            "'{s}' is not a duration: use ISO-8601 (PT0.2S, PT30S, P7D) or 200ms, 30s, 10m, 2h, 7d"
        )
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if let Some(rest) = s.strip_prefix('P').or_else(|| s.strip_prefix('p')) {
        return parse_iso8601(rest).ok_or_else(help);
    }
    parse_short(s).ok_or_else(help)
}

fn parse_iso8601(rest: &str) -> Option<Duration> {
    let (date, time) = match rest.split_once(['T', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut any = false;
    for (part, units) in [
        (date, &[('W', 604_800.0), ('D', 86_400.0)][..]),
        (
            time.unwrap_or(""),
            &[('H', 3600.0), ('M', 60.0), ('S', 1.0)][..],
        ),
    ] {
        let mut num = String::new();
        let mut unit_idx = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                num.push(if c == ',' { '.' } else { c });
                continue;
            }
            let c = c.to_ascii_uppercase();
            let pos = units[unit_idx..].iter().position(|(u, _)| *u == c)? + unit_idx;
            let n: f64 = num.parse().ok()?;
            total += n * units[pos].1;
            num.clear();
            unit_idx = pos + 1;
            any = true;
        }
        if !num.is_empty() {
            return None;
        }
    }
    if time == Some("") || !any || !total.is_finite() {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

fn parse_short(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(n * secs);
    }
    Some(total)
}

/// Parses a size in bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let help =
        || format!("'{s}' is not a size: use a byte count or 512KiB, 4MiB, 10GiB (or KB, MB, GB)");
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| help())?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" | "Ki" => 1024.0,
        "MiB" | "Mi" => 1024.0 * 1024.0,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        "TiB" | "Ti" => 1024.0_f64.powi(4),
        "KB" | "kB" | "K" | "k" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        "TB" | "T" => 1e12,
        _ => return Err(help()),
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(help());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_both_forms() {
        let table = [
            ("PT0.2S", 200),
            ("PT30S", 30_000),
            ("PT5M", 300_000),
            ("PT10M", 600_000),
            ("P7D", 604_800_000),
            ("P1DT1H", 90_000_000),
            ("pt1m30s", 90_000),
            ("200ms", 200),
            ("30s", 30_000),
            ("10m", 600_000),
            ("7d", 604_800_000),
            ("1h30m", 5_400_000),
            ("0", 0),
            ("0s", 0),
        ];
        for (text, ms) in table {
            assert_eq!(
                parse_duration(text).unwrap(),
                Duration::from_millis(ms),
                "{text}"
            );
        }
        for bad in [
            "", "P", "PT", "10", "10x", "ms", "PT1H2H", "PT1S2M", "soon", "-1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB").unwrap(), 4 * 1024 * 1024);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("500KB").unwrap(), 500_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        for bad in ["", "MiB", "4 parsecs", "-1", "4XB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
