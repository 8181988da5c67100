//! What the benchmarks read about a process and the machine: one copy for
//! every bench.

/// With `MESBAK_BENCH_AGENT_LOG=<dir>`, copies the agent's log `log` into
/// that folder as `name`, for reading the stages a run went through.
pub fn keep_agent_log(log: &std::path::Path, name: &str) {
    if let Some(dir) = std::env::var_os("MESBAK_BENCH_AGENT_LOG") {
        let copy = std::path::Path::new(&dir).join(name);
        std::fs::create_dir_all(&dir).expect("create MESBAK_BENCH_AGENT_LOG's folder");
        std::fs::copy(log, &copy).expect("copy the agent's log");
        eprintln!("agent log: {}", copy.display());
    }
}

/// With `MESBAK_BENCH_LOAD_SESSIONS=<n>`, has the agent's restores load in
/// `n` psql sessions (`restore.load_sessions`; 0 = one per core).
pub fn load_sessions_from_env(config: &mut crate::AgentConfig) {
    if let Ok(sessions) = std::env::var("MESBAK_BENCH_LOAD_SESSIONS") {
        let sessions: i64 = sessions
            .parse()
            .expect("MESBAK_BENCH_LOAD_SESSIONS: a number of sessions");
        config.set("restore.load_sessions", sessions);
    }
}

/// `name` from the environment as a number, else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The peak resident set size of `pid` so far (VmHWM), in KiB; 0 when gone.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) `pid` used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: utime and stime are the
    // 12th and 13th fields, in USER_HZ (100 on Linux).
    let ticks: f64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    ticks / 100.0
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
