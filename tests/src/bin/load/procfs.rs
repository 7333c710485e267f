//! The server's resident memory and CPU time, read from `/proc` for the PIDs given on the
//! command line (nginx: its worker PIDs; their figures are summed).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Memory of the watched processes, summed, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// `VmRSS` of `/proc/PID/status`.
    pub rss_kib: u64,
    /// `Pss` of `/proc/PID/smaps_rollup` (shared pages divided between their users: what nginx
    /// workers sharing nchan's shared memory really hold).
    pub pss_kib: u64,
}

/// Summed `VmRSS` and `Pss`. A PID that is gone counts 0.
pub fn mem(pids: &[u32]) -> Mem {
    let mut m = Mem::default();
    for pid in pids {
        m.rss_kib += kib_line(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0);
        m.pss_kib += kib_line(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0);
    }
    m
}

/// Summed `VmRSS` only (cheap enough to sample every few milliseconds).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|pid| kib_line(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0)).sum()
}

/// Summed `VmHWM`: each process's own peak RSS over its whole life, kept by the kernel, so no
/// short peak between two samples is missed. It covers everything the process did before this
/// run too, and a sum of per-process peaks is at least the peak of the sum (nginx workers).
pub fn hwm_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|pid| kib_line(&format!("/proc/{pid}/status"), "VmHWM:").unwrap_or(0)).sum()
}

/// The watched PIDs that are gone: no `/proc/PID/stat`, or a zombie (a server that exited but
/// was not reaped yet still has one, with no memory and no more CPU time). Their figures read 0
/// in [`mem`] and nothing in [`cpu_secs`], so a run with any is no reading of the server.
pub fn gone(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
            // The state is the first field after the command name's closing paren.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
            matches!(state, None | Some("Z" | "X"))
        })
        .collect()
}

fn kib_line(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// utime + stime of the watched processes (all their threads), in seconds. A process that is
/// gone adds nothing (the caller checks [`gone`] at the end).
pub fn cpu_secs(pids: &[u32]) -> f64 {
    // Linux reports these in USER_HZ ticks, which its ABI fixes at 100.
    const USER_HZ: f64 = 100.0;
    let mut ticks = 0u64;
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The command name (field 2) may hold spaces: count fields after its closing paren.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); utime is field 14, stime field 15.
        ticks += fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / USER_HZ
}

/// The whole machine's CPU time from the first line of `/proc/stat`: (idle, total) in ticks
/// (idle and iowait count as idle).
pub fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (idle, v.iter().take(8).sum())
}

/// Samples summed `VmRSS` on a thread of its own every `every` until dropped; keeps the peak.
pub struct PeakSampler {
    pids: Vec<u32>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    /// Starts sampling.
    pub fn start(pids: Vec<u32>, every: Duration) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(&pids)));
        let (s, p, watched) = (stop.clone(), peak.clone(), pids.clone());
        let thread = std::thread::spawn(move || {
            let pids = watched;
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(&pids), Ordering::Relaxed);
                std::thread::sleep(every);
            }
        });
        PeakSampler { pids, stop, peak, thread: Some(thread) }
    }

    /// Stops and returns the peak (a last sample included), in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed).max(rss_kib(&self.pids))
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
