//! The server's own figures from `/proc/<pid>` (Linux): CPU time and resident memory, and
//! pinning all its threads to one core.

use std::path::PathBuf;
use std::time::Duration;

/// Errors reading a process's figures.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// No such process (or `/proc` unreadable).
    #[error("cannot read /proc/{pid}: {source}")]
    Read {
        /// The pid.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` or `status` had an unexpected shape.
    #[error("unexpected format of /proc/{0}")]
    Format(u32),
    /// `sched_setaffinity` refused.
    #[error("cannot pin pid {pid} to core {core}: {source}")]
    Pin {
        /// The thread id.
        pid: u32,
        /// The core.
        core: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

fn read(pid: u32, file: &str) -> Result<String, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    std::fs::read_to_string(path).map_err(|source| ProcError::Read { pid, source })
}

/// User + system CPU time of the whole process (all threads), from `/proc/<pid>/stat` fields
/// 14 and 15 (clock ticks, `sysconf(_SC_CLK_TCK)`; 10 ms resolution at the usual 100 Hz).
///
/// # Errors
/// [`ProcError`] when the process is gone or the file is malformed.
pub fn cpu_time(pid: u32) -> Result<Duration, ProcError> {
    let stat = read(pid, "stat")?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or(ProcError::Format(pid))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so fields 14 and 15 are at indices 11 and 12.
    let ticks = |i: usize| -> Result<u64, ProcError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or(ProcError::Format(pid))
    };
    let total = ticks(11)? + ticks(12)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(Duration::from_nanos(
        total.saturating_mul(1_000_000_000 / hz),
    ))
}

/// Resident set size in bytes (`VmRSS` of `/proc/<pid>/status`).
///
/// # Errors
/// [`ProcError`] when the process is gone or the line is missing.
pub fn rss_bytes(pid: u32) -> Result<u64, ProcError> {
    let status = read(pid, "status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or(ProcError::Format(pid))
}

/// Pins every thread of process `pid` to `core` (threads started later inherit the mask of
/// the thread that starts them).
///
/// # Errors
/// [`ProcError`] when the task list is unreadable or the kernel refuses.
pub fn pin_process(pid: u32, core: usize) -> Result<(), ProcError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|source| ProcError::Read { pid, source })?;
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET only writes inside it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(
                tid as libc::pid_t,
                std::mem::size_of::<libc::cpu_set_t>(),
                &set,
            )
        };
        if rc != 0 {
            return Err(ProcError::Pin {
                pid: tid,
                core,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_time(pid).is_ok());
        assert!(rss_bytes(pid).unwrap_or(0) > 0);
        assert!(matches!(cpu_time(u32::MAX), Err(ProcError::Read { .. })));
    }
}
