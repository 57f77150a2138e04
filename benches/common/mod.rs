//! Helpers shared by the bench binaries (`llm`, `seq2seq`): environment knobs
//! and this process's CPU time and peak memory, read from `/proc`.

#![allow(dead_code)] // each bench uses its own subset

/// A whole-number environment knob, or `default` when unset or empty.
pub fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} wants a whole number, not '{v}'")),
        _ => Ok(default),
    }
}

/// A numeric field of `/proc/self/status` (`VmHWM:`, `Threads:`, …).
pub fn proc_status_field(name: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident memory of this process so far, in MB.
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_field("VmHWM:").map(|kb| kb / 1024.0)
}

/// User + system CPU seconds of this process so far (all threads).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here, 0-based),
    // in clock ticks: USER_HZ, 100 on Linux.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
