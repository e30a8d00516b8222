//! The standard Prometheus process metrics (`process_*`), read from `/proc/self` on Linux.
//!
//! Sources: `/proc/self/stat` (fields 14 `utime` and 15 `stime` in clock ticks, 22 `starttime` in ticks
//! since boot, 23 `vsize` in bytes), `/proc/self/status` (`VmRSS`, in kB), `/proc/stat` (`btime`, the boot
//! time in Unix seconds), `/proc/self/fd` (one entry per open descriptor) and `/proc/self/limits`
//! ("Max open files"). Ticks are taken as 100 a second (Linux's fixed `USER_HZ`, as Prometheus's own
//! procfs library does). Where a file cannot be read (another OS, a restricted sandbox) the metrics it
//! feeds are left out rather than reported as zero.

use crate::prom::{Kind, Writer};

/// Linux's `USER_HZ`: the unit of the tick counts in `/proc`.
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/self/stat` after the command name, which may itself hold spaces and parentheses,
/// so the split starts after its last `)`. Index 0 is field 3 (`state`).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map_or_else(Vec::new, |(_, rest)| rest.split_whitespace().collect())
}

/// Field `n` (1-based, as `proc(5)` numbers them) of `/proc/self/stat`, parsed.
fn stat_field(fields: &[&str], n: usize) -> Option<f64> {
    fields
        .get(n.checked_sub(3)?)?
        .parse::<u64>()
        .ok()
        .map(|v| v as f64)
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb * 1024) as f64)
}

/// `btime` of `/proc/stat`: when the machine booted, in Unix seconds.
fn boot_time(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|v| v as f64)
}

/// The soft limit on open files from `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse::<u64>().ok().map(|v| v as f64)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Writes the process metrics that can be read.
pub fn write(w: &mut Writer) {
    let mut family = |name: &str, kind: Kind, help: &str, value: Option<f64>| {
        if let Some(v) = value {
            w.family(name, kind, help).sample(name, &[], v);
        }
    };
    let stat = read("/proc/self/stat").unwrap_or_default();
    let fields = stat_fields(&stat);
    let cpu = stat_field(&fields, 14)
        .zip(stat_field(&fields, 15))
        .map(|(user, system)| (user + system) / TICKS_PER_SECOND);
    family(
        "process_cpu_seconds_total",
        Kind::Counter,
        "Total user and system CPU time spent in seconds.",
        cpu,
    );
    family(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
        read("/proc/self/status")
            .as_deref()
            .and_then(resident_bytes),
    );
    family(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size in bytes.",
        stat_field(&fields, 23),
    );
    let start = stat_field(&fields, 22)
        .zip(read("/proc/stat").as_deref().and_then(boot_time))
        .map(|(ticks, boot)| boot + ticks / TICKS_PER_SECOND);
    family(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since unix epoch in seconds.",
        start,
    );
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    family(
        "process_open_fds",
        Kind::Gauge,
        "Number of open file descriptors.",
        open,
    );
    family(
        "process_max_fds",
        Kind::Gauge,
        "Maximum number of open file descriptors.",
        read("/proc/self/limits").as_deref().and_then(max_fds),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed_field_by_field() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat =
            "42 (kv (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1234 567890 300";
        let f = stat_fields(stat);
        assert_eq!(stat_field(&f, 3), None, "state is not a number");
        assert_eq!(stat_field(&f, 14), Some(250.0));
        assert_eq!(stat_field(&f, 15), Some(50.0));
        assert_eq!(stat_field(&f, 22), Some(1234.0));
        assert_eq!(stat_field(&f, 23), Some(567890.0));
        assert_eq!(
            resident_bytes("Name:\tkv\nVmRSS:\t    2048 kB\n"),
            Some(2048.0 * 1024.0)
        );
        assert_eq!(boot_time("cpu 1 2 3\nbtime 1700000000\n"), Some(1.7e9));
        assert_eq!(
            max_fds("Limit                     Soft Limit           Hard Limit           Units     \nMax open files            1024                 4096                 files     \n"),
            Some(1024.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reports_every_metric() {
        let mut w = Writer::new();
        write(&mut w);
        let out = w.finish();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(out.contains(&format!("\n{name} ")), "{name} missing: {out}");
        }
    }
}
