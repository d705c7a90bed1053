//! Reading the guest console that `hull-vmm --console FILE` wrote.

/// What hull-guest-probe's report lines start with.
pub const PROBE_PREFIX: &str = "HULL_PROBE ";

/// The probe's report lines in `console`, prefix removed, in order. Kernel
/// timestamps (`[    1.234] `) and serial line endings are dropped.
pub fn probe_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .filter_map(|line| {
            let at = line.find(PROBE_PREFIX)?;
            Some(line[at + PROBE_PREFIX.len()..].trim_end().to_string())
        })
        .collect()
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_ignore_timestamps_and_other_output() {
        let console =
            "[    0.1] Linux version 6.1\r\n[    2.5] HULL_PROBE start\r\nHULL_PROBE done\nnoise\n";
        assert_eq!(probe_lines(console), ["start", "done"]);
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
