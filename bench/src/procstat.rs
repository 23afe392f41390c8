//! Process and system facts from /proc: CPU time and resident memory of this process and of
//! broker PIDs, the open-file limit, the ephemeral port range, and the [`Limits`] they put on a run.

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

/// Resident memory (VmRSS) of process `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Reads `VmRSS:  1234 kB` from the text of /proc/PID/status.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.trim_start_matches("VmRSS:").split_whitespace().next()?.parse().ok()
}

/// The ephemeral port range from /proc/sys/net/ipv4/ip_local_port_range (Linux default
/// 32768–60999).
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| parse_port_range(&t))
        .unwrap_or((32768, 60999))
}

/// Reads "LOW HIGH".
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    (lo <= hi).then_some((lo, hi))
}

/// What this machine allows a run: open files per process, ephemeral ports per source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Soft open-file limit of this process (worker processes inherit it).
    pub fd_limit: u64,
    /// Ephemeral port range.
    pub ports: (u16, u16),
    /// Source addresses (`--ifaddr`; 0 = the kernel picks one).
    pub addresses: usize,
}

impl Limits {
    /// This machine's limits for a run over `addresses` source addresses.
    pub fn read(addresses: usize) -> Self {
        Limits { fd_limit: fd_limit().unwrap_or(1024), ports: ephemeral_ports(), addresses }
    }

    /// Connections one process may open.
    pub fn per_process(&self) -> usize {
        max_connections(self.fd_limit).min(usize::MAX as u64) as usize
    }

    /// Connections the ephemeral ports allow: one port range per source address (a socket bound
    /// to an address takes its port at bind time, whatever the destination), or per broker
    /// address without `--ifaddr`.
    pub fn by_ports(&self) -> usize {
        (usize::from(self.ports.1 - self.ports.0) + 1) * self.addresses.max(1)
    }

    /// The largest run with `workers` processes.
    pub fn largest_run(&self, workers: usize) -> usize {
        self.per_process().saturating_mul(workers.max(1)).min(self.by_ports())
    }

    /// The limits and what they allow, printed before a run of `wanted` connections in `workers`
    /// processes starts.
    pub fn describe(&self, wanted: usize, workers: usize) -> String {
        let addrs = self.addresses.max(1);
        format!(
            "limits: open files {} -> {} connections per process; ephemeral ports {}-{} ({} per \
             source address) x {addrs} address{} -> {} connections; largest run: {} in one process, {} \
             with worker processes (one per {} connections by default); this run: {wanted} connections \
             in {workers} process{}",
            self.fd_limit,
            self.per_process(),
            self.ports.0,
            self.ports.1,
            usize::from(self.ports.1 - self.ports.0) + 1,
            if addrs == 1 { "" } else { "es" },
            self.by_ports(),
            self.largest_run(1),
            self.by_ports(),
            crate::share::CONNECTIONS_PER_WORKER,
            if workers == 1 { "" } else { "es" },
        )
    }

    /// Whether `wanted` connections fit in `workers` processes; otherwise what to change.
    pub fn check(&self, wanted: usize, workers: usize) -> Result<(), String> {
        if wanted > self.by_ports() {
            return Err(format!(
                "the ephemeral ports allow {} ({} source address(es)); add source addresses with --ifaddr",
                self.by_ports(),
                self.addresses.max(1)
            ));
        }
        let per_worker = wanted.div_ceil(workers.max(1));
        if per_worker > self.per_process() {
            return Err(format!(
                "{per_worker} per process exceeds the open-file limit {} ({} connections per process); \
                 use more --workers or raise `ulimit -n`",
                self.fd_limit,
                self.per_process()
            ));
        }
        Ok(())
    }
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

    #[test]
    fn rss_and_port_range_are_parsed() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("9 1"), None);
        assert!(rss_kib(std::process::id()).is_some());
    }

    #[test]
    fn limits_bound_a_run_by_files_and_ports() {
        let l = Limits { fd_limit: 20_000, ports: (32768, 60999), addresses: 0 };
        assert_eq!((l.per_process(), l.by_ports()), (19_936, 28_232));
        assert_eq!(l.largest_run(1), 19_936);
        assert_eq!(l.largest_run(2), 28_232);
        assert!(l.check(15_000, 1).is_ok());
        assert!(l.check(20_000, 1).unwrap_err().contains("--workers"));
        assert!(l.check(20_000, 2).is_ok());
        assert!(l.check(30_000, 2).unwrap_err().contains("--ifaddr"));
        let three = Limits { addresses: 3, ..l };
        assert_eq!(three.by_ports(), 84_696);
        assert!(three.check(30_000, 2).is_ok());
        assert!(three.describe(30_000, 2).contains("x 3 addresses -> 84696 connections"));
    }
}
