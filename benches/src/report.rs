//! Medians, ranges and ratios for the benchmark drivers' tables.

use std::time::Duration;

pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// `median (min–max)` in seconds with `decimals` digits.
pub fn cell(times: &[Duration], decimals: usize) -> String {
    let min = times.iter().min().copied().unwrap_or_default();
    let max = times.iter().max().copied().unwrap_or_default();
    let secs = |time: Duration| format!("{:.decimals$}", time.as_secs_f64());
    format!("{}s ({}–{})", secs(median(times)), secs(min), secs(max))
}

/// Median of `a` over median of `b`.
pub fn ratio(a: &[Duration], b: &[Duration]) -> f64 {
    median(a).as_secs_f64() / median(b).as_secs_f64()
}

/// The load average, printed with results so readers can judge how busy the machine was.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".to_owned(), |text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_the_median_and_the_range() {
        let times = [3, 1, 2].map(Duration::from_millis);
        assert_eq!(median(&times), Duration::from_millis(2));
        assert_eq!(cell(&times, 3), "0.002s (0.001–0.003)");
        assert_eq!(ratio(&times, &[Duration::from_millis(4)]), 0.5);
    }
}
