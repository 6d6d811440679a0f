//! Sizes and rates as people write them, and printed the same way so a trace line can be
//! pasted back into a scenario.
//!
//! Sizes: `65536`, `"512 B"`, `"64KiB"`, `"1 MiB"`, `"8 kB"` (1000), `"2 MB"`.
//! Rates: the same with `/s` (`"512 B/s"`, `"4 KiB/s"`), or in bits: `"250 kbit/s"`,
//! `"1 Mbit/s"`, `"9600 bit/s"` (a rate in bits must be a whole number of bytes per second).
//! Printed: the largest binary unit that divides the value (`"4 KiB/s"`, `"1000 B/s"`).

/// Bytes for a size like `"64 KiB"` (whole numbers only; the space is optional).
pub fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = split(text)?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// Bytes per second for a rate like `"4 KiB/s"` or `"250 kbit/s"`.
pub fn parse_rate(text: &str) -> Option<u64> {
    let per = text.trim().strip_suffix("/s")?;
    if let Some(bits) = parse_bits(per) {
        return (bits % 8 == 0).then_some(bits / 8);
    }
    parse_size(per)
}

fn parse_bits(text: &str) -> Option<u64> {
    let (number, unit) = split(text)?;
    let scale: u64 = match unit {
        "bit" => 1,
        "kbit" => 1_000,
        "Mbit" => 1_000_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// The leading whole number and the unit after it (spaces around either ignored).
fn split(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim()))
}

/// `"4 KiB"`, `"1 MiB"`, `"1000 B"`.
pub fn format_size(bytes: u64) -> String {
    for (scale, unit) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{} {unit}", bytes / scale);
        }
    }
    format!("{bytes} B")
}

/// `"4 KiB/s"`, `"31250 B/s"`: what [`parse_rate`] reads back to the same value.
pub fn format_rate(bytes_per_second: u64) -> String {
    format!("{}/s", format_size(bytes_per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_as_people_write_them() {
        assert_eq!(parse_rate("512 B/s"), Some(512));
        assert_eq!(parse_rate("4 KiB/s"), Some(4096));
        assert_eq!(parse_rate("4KiB/s"), Some(4096));
        assert_eq!(parse_rate("250 kbit/s"), Some(31_250));
        assert_eq!(parse_rate("1 Mbit/s"), Some(125_000));
        assert_eq!(parse_rate("9600 bit/s"), Some(1200));
        assert_eq!(parse_rate("8 kB/s"), Some(8000));
        assert_eq!(parse_rate("2 MiB/s"), Some(2 << 20));
        assert_eq!(parse_rate("2048/s"), Some(2048));
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "",
            "4 KiB",
            "fast/s",
            "4 KB/h",
            "1.5 KiB/s",
            "-4 KiB/s",
            "4 kib/s",
            "12 bit/s",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad:?}");
        }
        assert_eq!(parse_size("99999999999999 GiB"), None);
    }

    #[test]
    fn what_is_printed_reads_back_to_the_same_value() {
        for v in [
            1,
            512,
            1000,
            1024,
            4096,
            8192,
            31_250,
            1 << 20,
            3 << 20,
            1 << 30,
        ] {
            let printed = format_rate(v);
            assert_eq!(parse_rate(&printed), Some(v), "{printed}");
        }
        assert_eq!(format_rate(4096), "4 KiB/s");
        assert_eq!(format_rate(31_250), "31250 B/s");
        assert_eq!(format_size(64 << 10), "64 KiB");
    }
}
