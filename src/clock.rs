//! The one clock deputy decides by: Unix seconds. Expiry, TTL caps, request deadlines and audit
//! times all read it here.
//!
//! Debug builds only (never a release or `dist` build) honour `DEPUTY_TEST_CLOCK=PATH`: the time
//! is then the number in that file, read at every call, so a test can hold the clock still and
//! move it forward (tests/it/model.rs expires agents that way) without sleeping.

/// The variable naming a test clock file (debug builds only).
pub const ENV_TEST_CLOCK: &str = "DEPUTY_TEST_CLOCK";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    #[cfg(debug_assertions)]
    if let Some(t) = test_clock() {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(debug_assertions)]
fn test_clock() -> Option<i64> {
    static PATH: std::sync::LazyLock<Option<std::path::PathBuf>> =
        std::sync::LazyLock::new(|| std::env::var_os(ENV_TEST_CLOCK).map(std::path::PathBuf::from));
    let path = PATH.as_ref()?;
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The wall-clock time now as RFC 3339 (for status and log lines, never for decisions).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
