//! Reading criterion's own estimates back, to print one table per run.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The moment to tell this run's estimates from older ones: call it at the
/// start of `main`.
#[must_use]
pub fn run_started() -> SystemTime {
    #[allow(clippy::disallowed_methods)] // a file-time comparison, not a clock in logic
    let now = SystemTime::now();
    now - Duration::from_secs(1)
}

/// Where criterion keeps its estimates (its own rule: `CRITERION_HOME`, else
/// the cargo target directory).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("criterion")
}

/// The median time in nanoseconds of one benchmark, if it ran since `since`.
#[must_use]
pub fn median_ns(group: &str, function: &str, parameter: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_home()
        .join(group)
        .join(function)
        .join(parameter)
        .join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}

/// A duration in the unit that suits it.
#[must_use]
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}
