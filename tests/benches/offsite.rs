//! Off-site copy of a backup to a local S3 server (s3s-fs), measured side by
//! side in one run against the baseline DESIGN.md names, as ratios:
//!
//! - the agent's upload (multipart, streamed) against `rclone copyto` of the
//!   same file to the same server (Debian's rclone, its defaults);
//! - the verification (reading the copy back and comparing its SHA-256)
//!   given separately, and the whole copy as the agent counts it;
//! - the agent's peak RSS over the run.
//!
//! `cargo bench -p mesbak-tests --bench offsite`; `MESBAK_BENCH_OFFSITE_MIB`
//! sets the backup's size (default 1024), `MESBAK_BENCH_ROUNDS` the rounds
//! (best of, default 2).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mesbak_interface::{BackupInfo, BackupKind};
use mesbak_tests::measure::*;
use mesbak_tests::*;

/// A value of the `/metrics` page.
fn metric(port: u16, series: &str) -> f64 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("health endpoint");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Writes a backup of `mib` MiB of random payload, encrypted as the agent
/// writes them, with its metadata, into the agent's backup folder.
fn make_backup(config: &AgentConfig, mib: u64) -> (String, std::path::PathBuf) {
    let id = "mes_2026-11-24_000000.sql.gz.enc".to_owned();
    let dir = config.backup_dir().join("database");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(&id);
    let file = std::fs::File::create(&path).unwrap();
    let mut encryptor =
        mesbak_format::Encryptor::new(std::io::BufWriter::new(file), &config.key()).unwrap();
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        random.read_exact(&mut block).unwrap();
        encryptor.write_all(&block).unwrap();
    }
    encryptor.finish().unwrap().flush().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let info = BackupInfo {
        id: id.clone(),
        kind: BackupKind::Database,
        path: path.display().to_string(),
        created: "2026-11-24T00:00:00Z".into(),
        size_bytes: bytes.len() as u64,
        sha256: hex(&openssl::sha::sha256(&bytes)),
        duration_ms: 0,
        restore_point: "2026-11-24_000000".into(),
        source: "mes".into(),
        server_version: String::new(),
        timescaledb_version: String::new(),
        schemas: vec![],
        table_rows: Default::default(),
        downtime_ms: 0,
        warnings: vec![],
    };
    drop(bytes);
    std::fs::write(
        dir.join(format!("{id}.json")),
        serde_json::to_vec_pretty(&info).unwrap(),
    )
    .unwrap();
    (id, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mib = env_u64("MESBAK_BENCH_OFFSITE_MIB", 1024);
    let rounds = env_u64("MESBAK_BENCH_ROUNDS", 2).max(1);
    let bus = Bus::start();
    let s3 = S3Server::start();
    s3.create_bucket("bench");
    let mut config = AgentConfig::new();
    // The retention days must keep a backup "made" on 2026-11-24.
    config.set("retention.days", 36500);
    let port = mesbak_tests::util::free_port();
    config.set("health.listen", format!("127.0.0.1:{port}"));
    let credentials = s3.credentials_file(config.dir());
    add_offsite(&mut config, s3.target("s3", "bench", "agent", &credentials));
    eprintln!("writing a {mib} MiB backup...");
    let (id, path) = make_backup(&config, mib);
    let size = std::fs::metadata(&path).unwrap().len();
    let rclone = Rclone::new(&[s3.rclone_section("s3")]);
    let agent = Agent::spawn(&bus, &config).await;
    let object = s3.object_file("bench", &format!("agent/database/{id}"));

    let mut best_rclone = Duration::MAX;
    let mut best_upload = Duration::MAX;
    let mut best_verify = Duration::MAX;
    let mut best_total = Duration::MAX;
    for round in 0..rounds {
        let target = format!("s3:bench/rclone/database/{id}-{round}");
        let started = Instant::now();
        let out = rclone
            .command()
            .arg("copyto")
            .arg(&path)
            .arg(&target)
            .output()
            .expect("run rclone copyto");
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "rclone copyto failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        best_rclone = best_rclone.min(took);

        // The agent copies what the target lacks: remove its copy first.
        let _ = std::fs::remove_file(&object);
        let _ = std::fs::remove_file(object.with_file_name(format!("{id}.json")));
        let started = Instant::now();
        let out = mesbakctl(&bus).args(["offsite", "sync"]).output().unwrap();
        let total = started.elapsed();
        assert!(
            out.status.success(),
            "offsite sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let copy = metric(
            port,
            "mesbak_offsite_last_copy_duration_seconds{target=\"s3\"}",
        );
        let verify = metric(
            port,
            "mesbak_offsite_last_verify_duration_seconds{target=\"s3\"}",
        );
        let verify = Duration::from_secs_f64(verify);
        let upload = Duration::from_secs_f64(copy).saturating_sub(verify);
        eprintln!(
            "  round {}: rclone copyto {:.2} s; agent upload {:.2} s + verification {:.2} s (sync job {:.2} s)",
            round + 1,
            secs(took),
            secs(upload),
            secs(verify),
            secs(total)
        );
        best_upload = best_upload.min(upload);
        best_verify = best_verify.min(verify);
        best_total = best_total.min(total);
    }
    let rss_mib = peak_rss_kib(agent.pid()) as f64 / 1024.0;
    let rate = |d: Duration| size as f64 / (1024.0 * 1024.0) / secs(d);
    println!(
        "off-site copy of a {:.0} MiB backup to s3s-fs on loopback (best of {rounds}):",
        size as f64 / 1048576.0
    );
    println!(
        "  rclone copyto:            {:.2} s ({:.0} MiB/s)",
        secs(best_rclone),
        rate(best_rclone)
    );
    println!(
        "  agent upload:             {:.2} s ({:.0} MiB/s) = {:.2}x rclone copyto (target <= 1.2x)",
        secs(best_upload),
        rate(best_upload),
        secs(best_upload) / secs(best_rclone)
    );
    println!(
        "  agent verification:       {:.2} s ({:.0} MiB/s), {:.0}% on top of the upload",
        secs(best_verify),
        rate(best_verify),
        100.0 * secs(best_verify) / secs(best_upload)
    );
    println!(
        "  whole sync job (mesbakctl offsite sync, upload + verification): {:.2} s = {:.2}x rclone copyto",
        secs(best_total),
        secs(best_total) / secs(best_rclone)
    );
    println!("  agent peak RSS:           {rss_mib:.1} MiB (target < 64 MiB)");
    drop(agent);
}
