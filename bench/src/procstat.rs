//! Process facts from /proc: CPU time of this process and of broker PIDs, and the fd limit.

use std::path::Path;

/// Clock ticks per second of /proc/*/stat times (USER_HZ, 100 on Linux for every architecture
/// the bench runs on; reading it needs `sysconf`, i.e. unsafe code the workspace denies).
const TICKS_PER_SECOND: f64 = 100.0;

/// File descriptors kept aside for the runtime, stdio, output files and the like.
pub const FD_RESERVE: u64 = 64;

/// CPU seconds (user + system) used so far by process `pid` (`None` for this process).
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_stat_cpu(&std::fs::read_to_string(path).ok()?)
}

/// Reads utime + stime (fields 14 and 15) from the text of a /proc/PID/stat file.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn fd_limit() -> Option<u64> {
    parse_fd_limit(&std::fs::read_to_string(Path::new("/proc/self/limits")).ok()?)
}

/// Reads the soft "Max open files" limit from the text of /proc/PID/limits.
pub fn parse_fd_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// The most connections one process may open under `limit` open files.
pub fn max_connections(limit: u64) -> u64 {
    limit.saturating_sub(FD_RESERVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_is_read_after_the_command_name() {
        let stat = "1234 (my (odd) bench) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
        assert!(cpu_seconds(None).is_some());
    }

    #[test]
    fn soft_fd_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(parse_fd_limit(limits), Some(20000));
        assert_eq!(max_connections(20000), 19936);
        assert!(fd_limit().is_some());
    }
}
