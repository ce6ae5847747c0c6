//! Extension values the prover orders like Longs: `decimal` (scaled by 10^4, as Cedar
//! stores it), `datetime` (milliseconds since the epoch) and `duration` (milliseconds).
//!
//! Literals are converted with Cedar's own evaluator where Cedar has a conversion (so the
//! prover and Cedar agree on every format Cedar accepts), and by a strict parser for
//! `decimal`, which has none. Anything that does not convert stays opaque.

use std::str::FromStr;

use cedar_policy::{eval_expression, Context, Entities, EntityUid, EvalResult, Expression, Request};

/// An extension type ordered as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scalar {
    Decimal,
    Datetime,
    Duration,
}

impl Scalar {
    /// From a schema extension type name or a constructor name.
    pub(crate) fn from_name(name: &str) -> Option<Scalar> {
        match name {
            "decimal" => Some(Scalar::Decimal),
            "datetime" => Some(Scalar::Datetime),
            "duration" => Some(Scalar::Duration),
            _ => None,
        }
    }

    /// The integer a constructor literal denotes, e.g. `decimal("1.5")` -> 15000.
    pub(crate) fn parse(self, src: &str) -> Option<i64> {
        match self {
            Scalar::Decimal => parse_decimal(src),
            Scalar::Datetime => eval_long(&format!(
                "datetime({}).durationSince(datetime(\"1970-01-01\")).toMilliseconds()",
                quote(src)?
            )),
            Scalar::Duration => eval_long(&format!("duration({}).toMilliseconds()", quote(src)?)),
        }
    }

    /// Cedar entity-JSON for a value (`None` when it cannot be written).
    pub(crate) fn render(self, v: i64) -> Option<serde_json::Value> {
        let (f, arg) = match self {
            Scalar::Decimal => {
                let sign = if v < 0 { "-" } else { "" };
                let abs = v.unsigned_abs();
                ("decimal", format!("{sign}{}.{:04}", abs / 10_000, abs % 10_000))
            }
            Scalar::Datetime => ("datetime", render_datetime(v)?),
            Scalar::Duration => ("duration", format!("{v}ms")),
        };
        // Round-trip through Cedar so a value it would reject is never offered.
        let back = self.parse(&arg)?;
        (back == v).then(|| serde_json::json!({"__extn": {"fn": f, "arg": arg}}))
    }
}

fn quote(s: &str) -> Option<String> {
    s.chars()
        .all(|c| c.is_ascii_graphic() || c == ' ')
        .then(|| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

fn eval_long(src: &str) -> Option<i64> {
    let expr = Expression::from_str(src).ok()?;
    let uid = EntityUid::from_str("Deputy::\"scalar\"").ok()?;
    let request = Request::new(uid.clone(), uid.clone(), uid, Context::empty(), None).ok()?;
    match eval_expression(&request, &Entities::empty(), &expr).ok()? {
        EvalResult::Long(v) => Some(v),
        _ => None,
    }
}

/// Cedar's decimal: `-?digits.digits` with 1 to 4 fractional digits, within i64 / 10^4.
fn parse_decimal(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.')?;
    if int.is_empty()
        || frac.is_empty()
        || frac.len() > 4
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: i64 = int.parse().ok()?;
    let mut f: i64 = frac.parse().ok()?;
    for _ in frac.len()..4 {
        f *= 10;
    }
    let mag = int.checked_mul(10_000)?.checked_add(f)?;
    Some(if neg { -mag } else { mag })
}

/// `YYYY-MM-DDThh:mm:ss.SSSZ` for milliseconds since the epoch (years 0000 to 9999).
fn render_datetime(ms: i64) -> Option<String> {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (h, mi, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    Some(format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_scaled_like_cedar() {
        assert_eq!(parse_decimal("1.5"), Some(15_000));
        assert_eq!(parse_decimal("-0.0001"), Some(-1));
        assert_eq!(parse_decimal("1."), None);
        assert_eq!(parse_decimal("1.23456"), None);
        assert_eq!(Scalar::Decimal.render(-5_000).unwrap()["__extn"]["arg"], "-0.5000");
    }

    #[test]
    fn datetimes_and_durations_use_cedar_conversions() {
        assert_eq!(Scalar::Datetime.parse("1970-01-02"), Some(86_400_000));
        assert_eq!(Scalar::Duration.parse("1h1ms"), Some(3_600_001));
        for ms in [0, 1, 86_399_999, 1_700_000_000_123, -86_400_000] {
            let json = Scalar::Datetime.render(ms).unwrap();
            let arg = json["__extn"]["arg"].as_str().unwrap().to_owned();
            assert_eq!(Scalar::Datetime.parse(&arg), Some(ms), "{arg}");
        }
        assert_eq!(Scalar::Duration.render(-7).unwrap()["__extn"]["arg"], "-7ms");
    }
}
