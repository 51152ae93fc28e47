//! Process metrics under the names the Prometheus client libraries use
//! (`process_resident_memory_bytes`, `process_open_fds`, `process_cpu_seconds_total`,
//! `process_start_time_seconds`), read from `/proc` at scrape time, and
//! `portcullis_build_info`.
//!
//! The parsing is pure and takes the files' text; `render` reads them and leaves out any
//! line whose file cannot be read (off Linux, all of them).

use std::fmt::Write as _;

use crate::telemetry::exposition::{family, label_value, single};

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`). The kernel reports these
/// fields in 100ths of a second on every architecture it runs on, whatever its internal
/// tick, so this is fixed ABI and needs no `sysconf` call.
const TICKS_PER_SECOND: f64 = 100.0;

/// What `/proc/self/stat` says: CPU time used and when the process started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub cpu_seconds: f64,
    /// Seconds after boot.
    pub started_after_boot: f64,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so fields are counted from after its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    let ticks = field(14)? + field(15)?;
    Some(Stat {
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        started_after_boot: field(22)? as f64 / TICKS_PER_SECOND,
    })
}

/// The resident set size in bytes, from `/proc/self/status` (`VmRSS:  1234 kB`).
pub fn parse_resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kib * 1024)
}

/// The boot time in seconds since the epoch, from `/proc/stat` (`btime 1700000000`).
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// `portcullis_build_info` and the process metrics, in the text format.
pub fn render() -> String {
    let mut out = String::with_capacity(1024);
    family(
        &mut out,
        "portcullis_build_info",
        "gauge",
        "Always 1; the version of the running gateway is its label.",
    );
    let _ = writeln!(
        out,
        "portcullis_build_info{{version=\"{}\"}} 1",
        label_value(env!("CARGO_PKG_VERSION"))
    );

    let read = |path: &str| std::fs::read_to_string(path).ok();
    if let Some(bytes) = read("/proc/self/status").and_then(|text| parse_resident_bytes(&text)) {
        single(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            bytes,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle reading it is one of the entries; it is counted, as the
        // client libraries count it.
        single(
            &mut out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            entries.count(),
        );
    }
    if let Some(stat) = read("/proc/self/stat").and_then(|text| parse_stat(&text)) {
        single(
            &mut out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            stat.cpu_seconds,
        );
        if let Some(boot) = read("/proc/stat").and_then(|text| parse_boot_time(&text)) {
            single(
                &mut out,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot as f64 + stat.started_after_boot,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real line, with a command name holding a space and a parenthesis.
    const STAT: &str = "4242 (portcullis (x) 1) S 1 4242 4242 0 -1 4194560 3126 0 0 0 \
                        250 75 0 0 20 0 9 0 123456 123456789 4321 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17638 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn stat_gives_cpu_and_start() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(stat.cpu_seconds, 3.25);
        assert_eq!(stat.started_after_boot, 1234.56);
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("4242 (portcullis) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn resident_memory_from_status() {
        let status = "Name:\tportcullis\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(parse_resident_bytes(status), Some(12345 * 1024));
        assert_eq!(parse_resident_bytes("Name:\tx\n"), None);
        assert_eq!(parse_resident_bytes("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn boot_time_from_proc_stat() {
        let stat = "cpu  1 2 3 4\nintr 5\nbtime 1765000000\nprocesses 9\n";
        assert_eq!(parse_boot_time(stat), Some(1_765_000_000));
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn render_reads_this_process() {
        let text = render();
        assert!(text.contains("portcullis_build_info{version=\""), "{text}");
        for name in [
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }
}
