//! How the whole machine's CPU time was spent during a run, from Linux's `/proc/stat`: how busy
//! the cores were, and how much time the hypervisor gave to someone else (steal). On a shared
//! virtual machine steal moves throughput by more than most changes to Herald do, so a run that
//! lost much of its CPU says so beside its figures instead of passing for a slower Herald.

/// Steal above this share of the machine's time earns a warning under the scenario's row.
const STEAL_WORTH_SAYING: f64 = 0.05;

/// The machine's cumulative CPU time, in clock ticks, summed over every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    busy: u64,
    idle: u64,
    steal: u64,
}

/// The shares of the machine's time between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuShare {
    /// Running anything: user, system and interrupt time (guests' time is counted in user).
    pub busy: f64,
    /// Taken by the hypervisor for other virtual machines while this one had work.
    pub steal: f64,
}

impl CpuTimes {
    /// Reads `/proc/stat`; `None` where there is none (not Linux).
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Parses the first line of `/proc/stat`: `cpu user nice system idle iowait irq softirq
    /// steal …`. Kernels older than 2.6.11 stop before steal; it is then zero.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let ticks: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
        if ticks.len() < 4 {
            return None;
        }
        Some(Self {
            busy: field(0) + field(1) + field(2) + field(5) + field(6),
            idle: field(3) + field(4),
            steal: field(7),
        })
    }

    /// What happened since `earlier`; `None` if no time passed (or the counters went back).
    pub fn since(&self, earlier: &Self) -> Option<CpuShare> {
        let busy = self.busy.checked_sub(earlier.busy)?;
        let idle = self.idle.checked_sub(earlier.idle)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        let total = (busy + idle + steal) as f64;
        (total > 0.0).then(|| CpuShare {
            busy: busy as f64 / total,
            steal: steal as f64 / total,
        })
    }
}

impl CpuShare {
    /// A warning for the scenario's notes when the hypervisor took enough to matter.
    pub fn warning(&self) -> Option<String> {
        (self.steal >= STEAL_WORTH_SAYING).then(|| {
            format!(
                "the hypervisor took {:.0}% of this machine's CPU time during the run (steal in \
                 /proc/stat), so these figures are lower than on a quiet host: run again later, \
                 or with --repeat 3 and read the median",
                self.steal * 100.0
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_busy_idle_and_steal_from_proc_stat() {
        let before = CpuTimes::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let after = CpuTimes::parse("cpu  400 0 150 900 50 0 100 300 0 0\n").unwrap();
        let share = after.since(&before).unwrap();
        // 500 busy, 100 idle, 300 stolen out of 900 ticks.
        assert!((share.busy - 500.0 / 900.0).abs() < 1e-9, "{share:?}");
        assert!((share.steal - 300.0 / 900.0).abs() < 1e-9, "{share:?}");
        let warning = share.warning().expect("a third stolen is worth saying");
        assert!(warning.contains("33%"), "{warning}");
    }

    #[test]
    fn a_quiet_host_earns_no_warning_and_bad_input_no_reading() {
        let before = CpuTimes::parse("cpu 100 0 0 100 0 0 0 10").unwrap();
        let after = CpuTimes::parse("cpu 200 0 0 200 0 0 0 12").unwrap();
        assert_eq!(after.since(&before).unwrap().warning(), None);
        // Old kernels have no steal column: it counts as none.
        let old = CpuTimes::parse("cpu 5 0 5 90").unwrap();
        assert_eq!(old.steal, 0);
        assert_eq!(CpuTimes::parse("intr 1 2 3"), None);
        assert_eq!(CpuTimes::parse("cpu 1 x 3 4"), None);
        assert_eq!(CpuTimes::parse("cpu 1 2"), None);
        assert_eq!(before.since(&before), None, "no time passed");
        assert_eq!(before.since(&after), None, "counters went back");
    }
}
