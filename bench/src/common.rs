//! Small helpers the scenarios share: writing the section, rates, verdicts, process memory.

use std::path::Path;
use std::time::Duration;

use crate::report::count;
use crate::stats::Samples;
use crate::BenchError;

/// Writes a scenario's markdown section to `out` (creating its directory), with how busy the
/// machine was while the scenario ran (see [`crate::noise`]) under its heading.
pub fn write_section(out: &Path, section: &str) -> Result<(), BenchError> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, with_noise_line(section, crate::noise::scenario()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// The section with a line under its heading (its first line) saying how busy the machine was.
pub fn with_noise_line(section: &str, noise: Option<crate::noise::Noise>) -> String {
    let line = match noise {
        Some(noise) => format!("*Machine: {}.*", noise.sentence()),
        None => "*Machine: how busy it was is unknown (no readable `/proc`).*".to_string(),
    };
    match section.split_once('\n') {
        Some((heading, rest)) if heading.starts_with('#') => {
            format!("{heading}\n\n{line}\n{}", rest)
        }
        _ => format!("{line}\n\n{section}"),
    }
}

/// " — *noisy: …*" when `noise` was noisy, else nothing: every target verdict ends with it.
pub fn noisy_note_of(noise: Option<crate::noise::Noise>) -> String {
    match noise {
        Some(noise) if noise.noisy() => format!(
            " — *noisy: other processes used {:.2} cores meanwhile*",
            noise.other
        ),
        _ => String::new(),
    }
}

/// Fails with `what` unless `ok`.
pub fn check(ok: bool, what: &str) -> Result<(), BenchError> {
    if ok {
        Ok(())
    } else {
        Err(what.to_string().into())
    }
}

/// Items per second of `n` items in `elapsed`.
pub fn per_second(n: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        n as f64 / elapsed.as_secs_f64()
    }
}

/// A rate, e.g. `12,345/s`.
pub fn rate(per_second: f64) -> String {
    format!("{}/s", count(per_second.round().max(0.0) as u64))
}

/// The median rate of `n` items per repetition, and its p10 – p90 spread (the slow repetition
/// gives the low rate).
pub fn rate_median(n: u64, samples: &Samples) -> f64 {
    per_second(n, samples.median())
}

/// `p10 – p90` of the rate of `n` items per repetition.
pub fn rate_spread(n: u64, samples: &Samples) -> String {
    format!(
        "{} – {}",
        rate(per_second(n, samples.quantile(0.9))),
        rate(per_second(n, samples.quantile(0.1)))
    )
}

/// "**met**" or "**missed**" with the shortfall, for a "higher is better" target.
pub fn verdict_at_least(value: f64, target: f64, unit: &str) -> String {
    verdict_at_least_in(value, target, unit, crate::noise::scenario())
}

/// [`verdict_at_least`] for a figure measured during `noise` (one part of the scenario).
pub fn verdict_at_least_in(
    value: f64,
    target: f64,
    unit: &str,
    noise: Option<crate::noise::Noise>,
) -> String {
    let verdict = if value >= target {
        format!("**met** ({value:.2}{unit} against {target:.2}{unit})")
    } else {
        format!(
            "**missed** ({value:.2}{unit} against {target:.2}{unit}: {:.0} % short)",
            (1.0 - value / target) * 100.0
        )
    };
    format!("{verdict}{}", noisy_note_of(noise))
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`), if readable.
pub fn proc_status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// KiB as MiB, e.g. `41.3 MiB`.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
