//! Gateway API durations (GEP-2257): one to four `<number><unit>` groups,
//! `^([0-9]{1,5}(h|m|s|ms)){1,4}$`, e.g. `10s`, `1m30s`, `500ms`, `1h0m0s`.

use std::time::Duration;

/// Parses a Gateway API duration; `None` when it does not follow GEP-2257.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if !(1..=5).contains(&digits) {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        // `ms` before `m`: the longest unit that fits.
        let (unit, len) = [("ms", 2), ("h", 1), ("m", 1), ("s", 1)]
            .into_iter()
            .find(|(unit, _)| rest.starts_with(unit))?;
        rest = &rest[len..];
        total += match unit {
            "h" => Duration::from_secs(number * 3600),
            "m" => Duration::from_secs(number * 60),
            "s" => Duration::from_secs(number),
            _ => Duration::from_millis(number),
        };
        groups += 1;
    }
    (1..=4).contains(&groups).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_gep_2257_examples() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Some(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(
            parse_duration("99999ms"),
            Some(Duration::from_millis(99_999))
        );
    }

    #[test]
    fn rejects_what_the_pattern_rejects() {
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "1d",
            "100000s",
            "1h1m1s1ms1s",
            "10S",
            "1sm",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
