//! mesbak's chunked AES-256-GCM against `openssl enc -aes-256-ctr`, side by
//! side on the same data in one run.
//!
//! ```text
//! cargo bench -p mesbak-format --bench crypto
//! MESBAK_BENCH_MIB=1024 cargo bench -p mesbak-format --bench crypto
//! ```
//!
//! Generates `MESBAK_BENCH_MIB` (default 256) MiB of pg_dump-like text once
//! (in /dev/shm when it has room, so the disk is not what is measured), then
//! times, best of 3 each: mesbak encrypting it to a file with the default
//! options and decrypting that file to nowhere, and the system `openssl`
//! binary doing the same with AES-256-CTR (no authentication, no key
//! derivation). The target is mesbak/openssl >= 0.7.
//!
//! mesbak's times are given twice: for the whole file, and for the data path
//! alone. The difference is the key derivation, which `openssl enc -K` does
//! not pay: PBKDF2 with 600000 iterations (on purpose: it is what makes
//! guessing a weak key slow), then HKDF. In format version 2 PBKDF2 runs
//! once per `Key` (per key salt), not per file, so each run here uses fresh
//! keys, as the first file a process writes or reads: the whole-file times
//! are that worst case, and every later file of the same process costs the
//! data path and one HKDF (microseconds). The throughput target is judged
//! on the data path.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mesbak_format::{DEFAULT_KDF_ITERATIONS, Decryptor, Encryptor, Key};

const MIB: u64 = 1024 * 1024;
const RUNS: usize = 3;
const TARGET: f64 = 0.7;
/// Read size when feeding the encryptor, like a compression stage would.
const FEED: usize = 1 << 20;

fn main() {
    let mib: u64 =
        match std::env::var("MESBAK_BENCH_MIB") {
            Ok(value) => value.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| {
                panic!("MESBAK_BENCH_MIB must be a positive number, not {value:?}")
            }),
            Err(_) => 256,
        };
    let size = mib * MIB;
    let dir = tempfile::Builder::new()
        .prefix("mesbak-bench-")
        .tempdir_in(scratch_base(size))
        .expect("create a scratch folder");
    let plain = dir.path().join("dump.sql");
    let ours = dir.path().join("dump.sql.enc");
    let theirs = dir.path().join("dump.sql.ctr");

    let started = Instant::now();
    generate_dump(&plain, size).expect("write the test data");
    let size = std::fs::metadata(&plain).unwrap().len();
    println!(
        "{:.0} MiB of pg_dump-like text in {} (generated in {:.1} s); best of {RUNS} runs",
        size as f64 / MIB as f64,
        dir.path().display(),
        started.elapsed().as_secs_f64()
    );

    // A fresh Key for each encryption and each decryption: one that wrote
    // or read before would skip PBKDF2 (its cache), and the numbers would
    // not show the derivation a process pays once.
    let key = || Key::from_secret(b"benchmark key, not secret").unwrap();
    let mut raw_key = [0u8; 32];
    let mut iv = [0u8; 16];
    openssl::rand::rand_bytes(&mut raw_key).unwrap();
    openssl::rand::rand_bytes(&mut iv).unwrap();
    let (hex_key, hex_iv) = (hex::encode(raw_key), hex::encode(iv));

    let mut ours_enc = Best::default();
    let mut ours_dec = Best::default();
    let mut ssl_enc = Best::default();
    let mut ssl_dec = Best::default();
    for _ in 0..RUNS {
        let (whole, data) = mesbak_encrypt(&plain, &ours, &key());
        ours_enc.add(whole, data);
        let (whole, data) = mesbak_decrypt(&ours, &key(), size);
        ours_dec.add(whole, data);
        let time = openssl(
            &["-in", path(&plain), "-out", path(&theirs)],
            &hex_key,
            &hex_iv,
        );
        ssl_enc.add(time, time);
        let time = openssl(
            &["-d", "-in", path(&theirs), "-out", "/dev/null"],
            &hex_key,
            &hex_iv,
        );
        ssl_dec.add(time, time);
    }
    assert_eq!(std::fs::metadata(&theirs).unwrap().len(), size);

    let rate = |time: Duration| size as f64 / MIB as f64 / time.as_secs_f64();
    let kdf = ours_enc.whole.saturating_sub(ours_enc.data);
    println!(
        "key derivation (PBKDF2-HMAC-SHA256, {DEFAULT_KDF_ITERATIONS} iterations, then HKDF): {:.3} s for a process's first file, about none for its later ones\n",
        kdf.as_secs_f64()
    );
    println!(
        "{:<34} {:>14} {:>14} {:>14}",
        "MiB/s", "encrypt", "decrypt", "enc+dec"
    );
    let rows = [
        ("openssl enc -aes-256-ctr", ssl_enc.data, ssl_dec.data),
        (
            "mesbak, whole file (fresh Key)",
            ours_enc.whole,
            ours_dec.whole,
        ),
        (
            "mesbak, data path (without KDF)",
            ours_enc.data,
            ours_dec.data,
        ),
    ];
    for (name, enc, dec) in rows {
        println!(
            "{name:<34} {:>14.0} {:>14.0} {:>14.0}",
            rate(enc),
            rate(dec),
            rate(enc + dec) * 2.0
        );
    }

    println!(
        "\n{:<34} {:>14} {:>14} {:>14}",
        "ratio mesbak/openssl", "encrypt", "decrypt", "enc+dec"
    );
    let ratio = |ours: Duration, theirs: Duration| theirs.as_secs_f64() / ours.as_secs_f64();
    let mut data_ratios = [0.0; 3];
    for (name, enc, dec) in [
        ("whole file (fresh Key)", ours_enc.whole, ours_dec.whole),
        ("data path (without KDF)", ours_enc.data, ours_dec.data),
    ] {
        let ratios = [
            ratio(enc, ssl_enc.data),
            ratio(dec, ssl_dec.data),
            ratio(enc + dec, ssl_enc.data + ssl_dec.data),
        ];
        println!(
            "{name:<34} {:>14.2} {:>14.2} {:>14.2}",
            ratios[0], ratios[1], ratios[2]
        );
        data_ratios = ratios;
    }
    let met = data_ratios.iter().all(|&r| r >= TARGET);
    println!(
        "\ntarget (data path ratio >= {TARGET} for encrypt, decrypt and both): {}",
        if met { "met" } else { "NOT met" }
    );
    // A process's first whole file reaches the target once its key
    // derivations (one to encrypt, one to decrypt) are small against the
    // data: solve
    // ssl(S) / (data(S) + kdf) = TARGET for S, all times linear in S.
    let per_mib = |time: Duration| time.as_secs_f64() / (size as f64 / MIB as f64);
    let ssl = per_mib(ssl_enc.data + ssl_dec.data);
    let data = per_mib(ours_enc.data + ours_dec.data);
    let kdfs = (ours_enc.whole + ours_dec.whole)
        .saturating_sub(ours_enc.data + ours_dec.data)
        .as_secs_f64();
    if ssl > TARGET * data {
        println!(
            "a process's first file (key derivation included) reaches it from about {:.0} MiB",
            TARGET * kdfs / (ssl - TARGET * data)
        );
    }
}

/// The fastest whole-operation and data-path times seen.
#[derive(Default)]
struct Best {
    whole: Duration,
    data: Duration,
}

impl Best {
    fn add(&mut self, whole: Duration, data: Duration) {
        if self.whole.is_zero() || whole < self.whole {
            self.whole = whole;
        }
        if self.data.is_zero() || data < self.data {
            self.data = data;
        }
    }
}

/// /dev/shm when it can hold the data and both encrypted copies with room to
/// spare, else the system temporary folder.
fn scratch_base(size: u64) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let free = nix::sys::statvfs::statvfs(shm)
        .map(|stat| stat.blocks_available() * stat.fragment_size())
        .unwrap_or(0);
    if free > 3 * size + 512 * MIB {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 scratch path")
}

/// Returns (whole operation, data path after the key derivation).
fn mesbak_encrypt(plain: &Path, out: &Path, key: &Key) -> (Duration, Duration) {
    let mut input = File::open(plain).unwrap();
    let mut buf = vec![0u8; FEED];
    let start = Instant::now();
    let mut writer = Encryptor::new(File::create(out).unwrap(), key).unwrap();
    let data_start = Instant::now();
    loop {
        let n = input.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        writer.write_all(&buf[..n]).unwrap();
    }
    writer.finish().unwrap();
    (start.elapsed(), data_start.elapsed())
}

fn mesbak_decrypt(file: &Path, key: &Key, expected: u64) -> (Duration, Duration) {
    let start = Instant::now();
    let mut reader = Decryptor::new(File::open(file).unwrap(), key).unwrap();
    let data_start = Instant::now();
    let n = io::copy(&mut reader, &mut io::sink()).unwrap();
    let times = (start.elapsed(), data_start.elapsed());
    assert_eq!(n, expected);
    times
}

fn openssl(args: &[&str], hex_key: &str, hex_iv: &str) -> Duration {
    let start = Instant::now();
    let status = Command::new("openssl")
        .args(["enc", "-aes-256-ctr", "-K", hex_key, "-iv", hex_iv])
        .args(args)
        .status()
        .expect("run the system openssl binary");
    let time = start.elapsed();
    assert!(status.success(), "openssl enc {args:?} failed");
    time
}

/// Writes about `size` bytes shaped like `pg_dump` output: DDL, then COPY
/// blocks of tab-separated rows with timestamps, numbers, tag paths, NULLs
/// and escaped text, as an MES history table holds.
fn generate_dump(path: &Path, size: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    const TAGS: [&str; 8] = [
        "Line1/Filler/Speed",
        "Line1/Filler/State",
        "Line2/Capper/Torque",
        "Line2/Labeler/Count",
        "Utilities/Boiler/Temp",
        "Packaging/Palletizer/Fault",
        "Line3/Oven/Zone2/Temp",
        "Quality/Checkweigher/Weight",
    ];
    const NOTES: [&str; 6] = [
        "\\N",
        "operator ack",
        "Stillstand: Wartung \\t Schicht B",
        "batch closed\\nby MES",
        "ñandú line changeover",
        "C:\\\\recipes\\\\r42.xml",
    ];
    let mut written = 0u64;
    let mut table = 0;
    let mut line = String::with_capacity(256);
    while written < size {
        table += 1;
        let ddl = format!(
            "\n--\n-- Name: history_{table}; Type: TABLE; Schema: mes_core; Owner: admin\n--\n\n\
             CREATE TABLE mes_core.history_{table} (\n    id bigint NOT NULL,\n    \
             t_stamp timestamp with time zone NOT NULL,\n    tag_path text NOT NULL,\n    \
             value double precision,\n    quality integer,\n    note text\n);\n\n\
             COPY mes_core.history_{table} (id, t_stamp, tag_path, value, quality, note) FROM stdin;\n"
        );
        out.write_all(ddl.as_bytes())?;
        written += ddl.len() as u64;
        for id in 0..200_000u64 {
            if written >= size {
                break;
            }
            let r = next();
            line.clear();
            use std::fmt::Write as _;
            let _ = writeln!(
                line,
                "{id}\t2026-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+00\t{}\t{}.{:04}\t{}\t{}",
                1 + r % 12,
                1 + (r >> 4) % 28,
                (r >> 9) % 24,
                (r >> 14) % 60,
                (r >> 20) % 60,
                (r >> 26) % 1000,
                TAGS[(r >> 36) as usize % TAGS.len()],
                (r >> 40) % 5000,
                (r >> 13) % 10000,
                [192, 192, 192, 0, 12][(r >> 52) as usize % 5],
                NOTES[(r >> 56) as usize % NOTES.len()],
            );
            out.write_all(line.as_bytes())?;
            written += line.len() as u64;
        }
        out.write_all(b"\\.\n")?;
        written += 3;
    }
    out.flush()
}
