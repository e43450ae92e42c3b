//! Readings from /proc: the server's RSS and CPU time, kernel socket memory, fd limits.
//!
//! Every function returns `None` (or an error string) instead of failing when a file is
//! missing or unreadable, so a run without a visible server process still reports traffic.

use std::fs;

/// Bytes per page, for /proc/net/sockstat `mem` (counted in pages).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

/// Clock ticks per second, for /proc/PID/stat utime and stime.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// The single process whose /proc/PID/comm is `name`. Errors if there are none or several.
pub fn find_process(name: &str) -> Result<u32, String> {
    let mut found = Vec::new();
    let dir = fs::read_dir("/proc").map_err(|e| format!("read /proc: {e}"))?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
            if comm.trim_end() == name {
                found.push(pid);
            }
        }
    }
    match found.len() {
        1 => Ok(found[0]),
        0 => Err(format!(
            "no process named {name:?} found; pass --server-pid"
        )),
        n => Err(format!(
            "{n} processes named {name:?} ({found:?}); pass --server-pid to choose one"
        )),
    }
}

/// Resident set size in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of the process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the full line, so utime (14) and stime (15) are at 11, 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Soft "Max open files" of a process.
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The TCP line of /proc/net/sockstat (this network namespace).
#[derive(Debug, Clone, Copy, Default)]
pub struct SockStat {
    pub tcp_inuse: u64,
    pub tcp_mem_pages: u64,
}

impl SockStat {
    pub fn mem_bytes(&self) -> u64 {
        self.tcp_mem_pages * page_size()
    }
}

pub fn sockstat() -> Option<SockStat> {
    let s = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse().ok()
    };
    Some(SockStat {
        tcp_inuse: field("inuse")?,
        tcp_mem_pages: field("mem")?,
    })
}

/// Raises this process's RLIMIT_NOFILE soft limit to the hard limit; returns (soft, hard).
pub fn raise_nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (0, 0);
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid rlimit not above the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    (lim.rlim_cur as u64, lim.rlim_max as u64)
}

/// This process's own RSS.
pub fn self_rss_bytes() -> Option<u64> {
    rss_bytes(std::process::id())
}
