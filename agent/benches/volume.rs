//! Ignition volume snapshot against the way operators did it, side by side
//! in one run, as ratios (the machine is shared and noisy):
//!
//! - the agent's `ignition::backup` (called directly as a library function:
//!   stop the gateway, stream the volume through the Docker archive API,
//!   restart the gateway, parallel gzip, encrypt, write atomically);
//! - `tar czf` of the volume's folder on the host (`docker volume inspect`
//!   Mountpoint), gzip's default level 6, no encryption;
//! - and the gateway's downtime during the agent's backup.
//!
//! The volume is generated like a gateway's: many small project files,
//! compressible logs and some incompressible binaries.
//!
//! `cargo bench -p mesbak-agent --bench volume` as root with dockerd and the
//! `mesbak-test/busybox` image (`dev/lib.sh ensure_images`).
//! `MESBAK_BENCH_VOLUME_MIB` sets the volume's size (default 300),
//! `MESBAK_BENCH_ROUNDS` the rounds (best of, default 2),
//! `MESBAK_BENCH_COMPRESSION` the agent's compression (`gzip`, the default,
//! or `zstd`) and `MESBAK_BENCH_LEVEL` its level (default: the agent's).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mesbak_agent::app::App;
use mesbak_agent::config::Config;
use mesbak_agent::ignition;
use mesbak_agent::storage::Storage;
use mesbak_interface::{Compression, JobOperation};

const IMAGE: &str = "mesbak-test/busybox";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The volume and the stand-in gateway; removed on drop.
struct Stand {
    volume: String,
    gateway: String,
}

impl Drop for Stand {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.gateway])
            .output();
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.volume])
            .output();
    }
}

/// xorshift64*: fast, reproducible filler.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "GatewayContext",
    "TagProvider",
    "Perspective",
    "OPC-UA",
    "connection",
    "quality",
    "Good",
    "Bad_Stale",
    "Linie",
    "Motor",
    "Temperatur",
    "setpoint",
    "alarm",
    "acknowledged",
    "historian",
    "partition",
    "store-and-forward",
    "INFO",
    "WARN",
    "DEBUG",
];

/// Log-like text: timestamps, counters, a few words; compresses about 5-8x.
fn text(rng: &mut Rng, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 200);
    let mut line = 0u64;
    while out.len() < bytes {
        line += 1;
        let r = rng.next();
        let _ = writeln!(
            out,
            "2026-11-{:02} {:02}:{:02}:{:02}.{:03} {} [{}] {} {}={} value={:.3} line {line}",
            1 + r % 28,
            (r >> 8) % 24,
            (r >> 16) % 60,
            (r >> 24) % 60,
            (r >> 32) % 1000,
            WORDS[(r >> 40) as usize % 3 + 17],
            WORDS[(r >> 44) as usize % WORDS.len()],
            WORDS[(r >> 48) as usize % WORDS.len()],
            WORDS[(r >> 52) as usize % WORDS.len()],
            (r >> 56) % 100,
            (r % 100_000) as f64 / 7.0,
        );
    }
    out.truncate(bytes);
    out
}

/// Fills `root` with about `total` bytes: 70 % logs and configuration text,
/// 20 % incompressible binaries, 10 % small project files (2-20 KiB).
fn generate(root: &Path, total: u64) -> (u64, u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut write = |path: PathBuf, data: &[u8]| {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, data).expect("write");
        files += 1;
        bytes += data.len() as u64;
    };
    let text_total = total * 7 / 10;
    let mut made = 0u64;
    let mut n = 0;
    while made < text_total {
        let size = (8 << 20).min((text_total - made) as usize).max(1);
        write(
            root.join(format!("logs/wrapper.log.{n}")),
            &text(&mut rng, size),
        );
        made += size as u64;
        n += 1;
    }
    let binary_total = total * 2 / 10;
    let mut made = 0u64;
    let mut n = 0;
    while made < binary_total {
        let size = (16 << 20).min((binary_total - made) as usize).max(1);
        let mut data = vec![0u8; size];
        rng.fill(&mut data);
        write(root.join(format!("modules/module-{n}.modl")), &data);
        made += size as u64;
        n += 1;
    }
    let small_total = total / 10;
    let mut made = 0u64;
    let mut n = 0u64;
    while made < small_total {
        let size = 2048 + (rng.next() % (18 << 10)) as usize;
        let path = root.join(format!(
            "projects/Line {}/com.inductiveautomation.perspective/views/View {}/Ünit {}/view.json",
            n % 7,
            n / 7 % 40,
            n
        ));
        write(path, &text(&mut rng, size));
        made += size as u64;
        n += 1;
    }
    (files, bytes)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let size_mib = env_u64("MESBAK_BENCH_VOLUME_MIB", 300);
    let rounds = env_u64("MESBAK_BENCH_ROUNDS", 2).max(1);
    let compression: Compression = std::env::var("MESBAK_BENCH_COMPRESSION")
        .unwrap_or_else(|_| "gzip".into())
        .parse()
        .expect("MESBAK_BENCH_COMPRESSION: gzip or zstd");
    let level = std::env::var("MESBAK_BENCH_LEVEL")
        .ok()
        .map(|l| l.parse::<u32>().expect("MESBAK_BENCH_LEVEL: a number"));
    assert!(
        !docker(&["images", "-q", IMAGE]).is_empty(),
        "the image {IMAGE} is missing; build it with `bash -c 'source dev/lib.sh; ensure_images'`"
    );
    let work = tempfile::tempdir().expect("temporary folder");
    let suffix = format!("{}", std::process::id());
    let stand = Stand {
        volume: format!("mesbak-bench-vol-{suffix}"),
        gateway: format!("mesbak-bench-gw-{suffix}"),
    };
    docker(&["volume", "create", &stand.volume]);
    let mountpoint = PathBuf::from(docker(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        &stand.volume,
    ]));
    eprintln!(
        "generating about {size_mib} MiB in volume {}...",
        stand.volume
    );
    let (files, bytes) = generate(&mountpoint, size_mib << 20);
    docker(&[
        "run",
        "-d",
        "--name",
        &stand.gateway,
        "--network",
        "none",
        "-v",
        &format!("{}:/usr/local/bin/ignition/data", stand.volume),
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM INT; while :; do sleep 1 & wait $!; done",
    ]);

    let key_file = work.path().join("backup.key");
    mesbak_format::Key::generate_file(&key_file).expect("write a key");
    let state_dir = work.path().join("state");
    std::fs::create_dir_all(&state_dir).expect("state folder");
    let mut config = Config {
        backup_dir: work.path().join("backups"),
        state_dir,
        ..Default::default()
    };
    config.encryption.key_file = key_file;
    config.ignition.volume = stand.volume.clone();
    config.ignition.stop_containers = vec![stand.gateway.clone()];
    config.ignition.helper_image = String::new();
    config.ignition.stop_timeout_secs = 10;
    config.backup.compression = compression;
    config.backup.compression_level = level;
    config.backup.min_free_bytes = 0;
    config.health.listen = String::new();
    let codec = config.codec();
    let app = App::new(config).expect("agent context");
    app.docker().await.expect("connect to Docker");

    let tar_gz = work.path().join("operator.tar.gz");
    let mut agent_best = Duration::MAX;
    let mut tar_best = Duration::MAX;
    let mut downtime_best = u64::MAX;
    let mut agent_size = 0;
    for round in 0..rounds {
        let job = app
            .jobs
            .begin(JobOperation::Backup, "ignition".into(), 0)
            .expect("a job slot");
        let point = Storage::restore_point(time::OffsetDateTime::now_utc());
        let started = Instant::now();
        let info = ignition::backup(&app, &job, &point)
            .await
            .unwrap_or_else(|err| panic!("the agent's backup failed: {}", err.message()));
        let agent = started.elapsed();
        app.jobs.end(&job);
        std::fs::remove_file(&info.path).expect("remove the backup");

        let _ = std::fs::remove_file(&tar_gz);
        let started = Instant::now();
        let status = Command::new("tar")
            .arg("czf")
            .arg(&tar_gz)
            .arg("-C")
            .arg(&mountpoint)
            .arg(".")
            .status()
            .expect("run tar");
        assert!(status.success(), "tar czf failed");
        let tar = started.elapsed();
        eprintln!(
            "round {}: agent {:.2} s (gateway down {:.2} s), tar czf {:.2} s",
            round + 1,
            agent.as_secs_f64(),
            info.downtime_ms as f64 / 1000.0,
            tar.as_secs_f64()
        );
        agent_best = agent_best.min(agent);
        tar_best = tar_best.min(tar);
        downtime_best = downtime_best.min(info.downtime_ms);
        agent_size = info.size_bytes;
    }
    let tar_size = std::fs::metadata(&tar_gz).expect("tar output").len();
    let throughput = |d: Duration| mib(bytes) / d.as_secs_f64();
    println!(
        "volume: {files} files, {:.0} MiB; agent {} level {}; best of {rounds}",
        mib(bytes),
        codec.compression,
        codec.level
    );
    println!(
        "agent snapshot (stop, stream, restart, compress, encrypt, fsync): {:>7.2} s  {:>6.1} MiB/s  {:>7.1} MiB",
        agent_best.as_secs_f64(),
        throughput(agent_best),
        mib(agent_size)
    );
    println!(
        "tar czf of the volume folder (no encryption):                 {:>7.2} s  {:>6.1} MiB/s  {:>7.1} MiB",
        tar_best.as_secs_f64(),
        throughput(tar_best),
        mib(tar_size)
    );
    println!(
        "ratio agent / tar czf: {:.2}x time (target <= 1.2x), {:.2}x size",
        agent_best.as_secs_f64() / tar_best.as_secs_f64(),
        agent_size as f64 / tar_size as f64
    );
    println!(
        "gateway downtime: {:.2} s ({:.0} % of the agent's snapshot; tar czf on a live gateway would need it stopped for {:.2} s)",
        downtime_best as f64 / 1000.0,
        downtime_best as f64 / 10.0 / agent_best.as_secs_f64(),
        tar_best.as_secs_f64()
    );
    drop(stand);
}
