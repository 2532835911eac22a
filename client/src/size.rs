//! Byte sizes as users write them (`20GiB`, `512MB`) and as messages show them.

/// Parses a size flag; the error names the text, for clap to show.
pub fn parse(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>().map(|size| size.as_u64()).map_err(|err| format!("{text:?}: {err}"))
}

/// `1536` → `1.5 KiB`.
pub fn human(count: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{count} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_show_in_binary_units() {
        assert_eq!(parse("20GiB"), Ok(20 << 30));
        assert_eq!(parse("512"), Ok(512));
        assert!(parse("lots").unwrap_err().contains("\"lots\""));
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(20 << 30), "20.0 GiB");
    }
}
