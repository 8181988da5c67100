//! The Ignition volume end to end: a real dockerd, a busybox stand-in
//! gateway on a volume shaped like `ignition-data`, the real agent on a
//! private bus. Snapshot, wipe, restore, compare every entry (path, type,
//! mode, owner, size, sha256, link target, time); the operator's way back
//! without mesbak; failures and crashes that must leave things as found.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mesbak_interface::{BackupInfo, RestoreOptions};
use mesbak_tests::util::{random_hex, run, run_text};
use mesbak_tests::*;
use zbus::zvariant::OwnedObjectPath;

/// What the issue asks the volume to hold, beyond the harness's gateway-like
/// tree: nested folders, non-ASCII and space-containing names, hidden files,
/// empty folders and files, relative/absolute/dangling symlinks, uid 1000
/// files with modes 0640/0755/4755, a 50 MB file, and an odd volume root.
const EXTRA: &str = r#"
umask 022
mkdir -p 'nested/one/two/three/four' 'Überwachung – Linie 2/Ansichten' '.hidden folder/inner' 'empty folder'
printf 'config\n' > '.hidden file'
: > 'empty file'
: > 'nested/one/two/three/four/empty'
printf 'Größe: 3 m²\n' > 'Überwachung – Linie 2/Ansichten/Übersicht 1.json'
printf 'x\n' > '.hidden folder/inner/.dot'
printf 'r\n' > owned-0640 && chown 1000:1000 owned-0640 && chmod 0640 owned-0640
printf 's\n' > owned-0755 && chown 1000:1000 owned-0755 && chmod 0755 owned-0755
printf 't\n' > setuid-4755 && chown 1000:1000 setuid-4755 && chmod 4755 setuid-4755
chown 1000:1000 'nested/one' && chmod 0750 'nested/one'
ln -s 'Überwachung – Linie 2/Ansichten/Übersicht 1.json' 'relative link'
ln -s /usr/local/bin/ignition/data/.hidden\ file absolute-link
ln -s 'gone/away' dangling-link
head -c 52428800 /dev/urandom > big-50MB.bin
touch -d '2024-02-03 04:05:06' 'Überwachung – Linie 2/Ansichten' 'empty folder' owned-0640 big-50MB.bin
touch -h -d '2023-01-01 00:00:01' 'relative link'
chown 1000:1000 . && chmod 0751 . && touch -d '2022-12-31 23:59:59' .
"#;

/// Every entry below the volume root, root included as `.`: path → type and
/// mode (`ls -l` style, setuid included), owner, links, mtime, and size plus
/// sha256 for files, size plus target for symlinks.
const LIST: &str = r#"
find . | sort | while IFS= read -r p; do
    s=$(stat -c '%A|%u|%g|%h|%Y' "$p")
    if [ -L "$p" ]; then x="|$(stat -c %s "$p")|-> $(readlink "$p")"
    elif [ -f "$p" ]; then x="|$(stat -c %s "$p")|$(sha256sum < "$p" | cut -d' ' -f1)"
    else x=; fi
    printf '%s\t%s%s\n' "$p" "$s" "$x"
done
"#;

type Listing = BTreeMap<String, String>;

fn parse_listing(text: &str) -> Listing {
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(path, rest)| (path.to_owned(), rest.to_owned()))
        .collect()
}

fn listing(volume: &Volume) -> Listing {
    parse_listing(&volume.sh(LIST))
}

/// [`listing`] with times to the nanosecond: for "not changed at all"
/// (backups keep whole seconds, as tar does).
fn exact_listing(volume: &Volume) -> Listing {
    parse_listing(&volume.sh(&LIST.replace("%Y", "%y")))
}

/// The same listing of a folder on the host, taken by the same busybox.
fn listing_of_dir(dir: &Path) -> Listing {
    parse_listing(
        &run_text(Command::new("docker").args([
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &format!("{}:/data", dir.display()),
            "-w",
            "/data",
            BUSYBOX,
            "sh",
            "-ec",
            LIST,
        ]))
        .unwrap(),
    )
}

#[track_caller]
fn assert_same_listing(actual: &Listing, expected: &Listing, what: &str) {
    let mut diff = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => diff.push(format!("missing {path} ({want})")),
            Some(got) if got != want => diff.push(format!("{path}: {got} != expected {want}")),
            Some(_) => {}
        }
    }
    for (path, got) in actual {
        if !expected.contains_key(path) {
            diff.push(format!("left over {path} ({got})"));
        }
    }
    assert!(
        diff.is_empty(),
        "{what}: {} difference(s):\n  {}",
        diff.len(),
        diff.join("\n  ")
    );
}

/// The test volume: the harness's gateway-like tree plus [`EXTRA`].
fn full_volume() -> Volume {
    let volume = Volume::create_populated();
    volume.sh(EXTRA);
    volume
}

/// A private bus, a stand-in gateway (running or just created) on `volume`,
/// and an agent configured from `config` for both. Bind the fields in this
/// order so they drop in reverse: the agent, the gateway, then the volume.
struct Stack {
    bus: Bus,
    volume: Volume,
    gateway: Gateway,
    config: AgentConfig,
    agent: Agent,
}

impl Stack {
    async fn start(
        volume: Volume,
        running: bool,
        mut config: AgentConfig,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> Stack {
        let bus = Bus::start();
        let gateway = if running {
            Gateway::start(&volume)
        } else {
            Gateway::create(&volume)
        };
        config.ignition(&volume, &[&gateway]);
        configure(&mut config);
        let agent = Agent::spawn(&bus, &config).await;
        Stack {
            bus,
            volume,
            gateway,
            config,
            agent,
        }
    }

    /// The harness's gateway-like volume, a running gateway, defaults.
    async fn populated() -> Stack {
        Stack::start(Volume::create_populated(), true, AgentConfig::new(), |_| {}).await
    }
}

/// Docker's time stamps with the fraction padded, so they compare as text.
fn docker_time(text: &str) -> String {
    let text = text.trim_end_matches('Z');
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    format!("{seconds}.{fraction:0<9}")
}

fn container_times(name: &str) -> (String, String) {
    let text = run_text(Command::new("docker").args([
        "inspect",
        "-f",
        "{{.State.StartedAt}} {{.State.FinishedAt}}",
        name,
    ]))
    .unwrap();
    let (started, finished) = text.split_once(' ').unwrap();
    (docker_time(started), docker_time(finished))
}

/// Helper containers an agent left behind.
fn helpers_of(config: &AgentConfig) -> Vec<String> {
    let text = run_text(Command::new("docker").args([
        "ps",
        "-a",
        "--filter",
        &format!("label=org.mesbak.helper={}", config.state_dir().display()),
        "--format",
        "{{.Names}}",
    ]))
    .unwrap();
    text.lines().map(str::to_owned).collect()
}

fn journal_is_empty(config: &AgentConfig) -> bool {
    config.pending_container_changes().is_empty()
}

fn ignition_file(config: &AgentConfig, id: &str) -> PathBuf {
    config.backup_dir().join("ignition").join(id)
}

async fn finish(agent: &Agent, job: OwnedObjectPath) -> JobOutcome {
    wait_job_outcome(agent.connection(), &job, DEFAULT_JOB_TIMEOUT).await
}

async fn backup(agent: &Agent, target: &str) -> JobOutcome {
    let job = agent.proxy().await.backup(target).await.unwrap();
    finish(agent, job).await
}

async fn restore(agent: &Agent, id: &str, skip_safety_backup: bool) -> JobOutcome {
    let options = RestoreOptions {
        skip_safety_backup: Some(skip_safety_backup),
    };
    let job = agent.proxy().await.restore(id, options).await.unwrap();
    finish(agent, job).await
}

async fn list(agent: &Agent) -> Vec<BackupInfo> {
    agent.proxy().await.list_backups().await.unwrap()
}

/// `mesbakctl decrypt FILE --key-file K` piped into `tar` with `args`: what
/// an operator does without the agent.
fn decrypt_into_tar(file: &Path, key: &Path, args: &str) -> String {
    let script = format!(
        "set -o pipefail; '{}' decrypt '{}' --key-file '{}' | tar {args}",
        binary("mesbakctl").display(),
        file.display(),
        key.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_wipe_restore_gives_back_every_entry_exactly() {
    let Stack {
        bus,
        volume,
        gateway,
        config,
        agent,
    } = Stack::start(full_volume(), true, AgentConfig::new(), |_| {}).await;
    let original = listing(&volume);
    assert!(original.len() > 40, "{original:?}");
    let (started_before, _) = container_times(gateway.name());

    // The way a timer runs it, without a terminal.
    let out = mesbakctl(&bus)
        .args(["backup", "ignition"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Creating backup: ignition_") && l.ends_with(".tar.gz.enc")),
        "{stdout}"
    );

    // The gateway was stopped for the copy and runs again.
    assert!(gateway.is_running(), "the gateway was left stopped");
    let (started_after, stopped_at) = container_times(gateway.name());
    assert!(
        started_before < stopped_at && stopped_at < started_after,
        "the gateway was not stopped and started again: started {started_before}, stopped {stopped_at}, started {started_after}"
    );
    assert!(journal_is_empty(&config));
    assert!(helpers_of(&config).is_empty(), "{:?}", helpers_of(&config));

    let backups = list(&agent).await;
    assert_eq!(backups.len(), 1, "{backups:?}");
    let info = backups[0].clone();
    let name_ok = info.id.len() == "ignition_2026-01-01_000000.tar.gz.enc".len()
        && info.id.starts_with("ignition_20")
        && info.id.ends_with(".tar.gz.enc");
    assert!(name_ok, "{}", info.id);
    assert_eq!(info.source, volume.name());
    assert!(
        info.downtime_ms > 0 && info.downtime_ms <= info.duration_ms,
        "downtime {} ms of {} ms",
        info.downtime_ms,
        info.duration_ms
    );
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
    let file = ignition_file(&config, &info.id);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len(), info.size_bytes);
    assert!(
        agent
            .log()
            .contains(&format!("downtime_ms={}", info.downtime_ms)),
        "the journal does not report the downtime"
    );

    // Without mesbak: decrypt | tar. The listing holds every entry...
    let names: BTreeSet<String> = decrypt_into_tar(&file, &config.key_file(), "tzf -")
        .lines()
        .map(|name| {
            let name = name.trim_end_matches('/');
            if name == "." || name.is_empty() {
                ".".to_owned()
            } else {
                format!("./{}", name.trim_start_matches("./"))
            }
        })
        .collect();
    let expected: BTreeSet<String> = original.keys().cloned().collect();
    assert_eq!(names, expected, "tar's listing of the decrypted backup");
    // ...and extracting it gives the volume back, owners, modes and times too.
    let extracted = tempfile::tempdir().unwrap();
    decrypt_into_tar(
        &file,
        &config.key_file(),
        &format!("xzpf - --numeric-owner -C '{}'", extracted.path().display()),
    );
    assert_same_listing(
        &listing_of_dir(extracted.path()),
        &original,
        "decrypt | tar xz on the host",
    );

    // Wipe, and leave things a restore must not keep.
    volume.clear();
    volume
        .sh("printf stale > stale.txt; mkdir -p db logs/new; printf x > db/leftover; chmod 0700 .");

    // Not as an operator.
    let out = mesbakctl_as(&bus, OPERATOR)
        .args(["restore", &info.id, "--yes"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listing(&volume).contains_key("./stale.txt"));

    let (started_before, _) = container_times(gateway.name());
    let out = mesbakctl(&bus)
        .args(["restore", &info.id, "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_listing(&listing(&volume), &original, "after the restore");
    assert!(gateway.is_running(), "the gateway was left stopped");
    let (started_after, stopped_at) = container_times(gateway.name());
    assert!(started_before < stopped_at && stopped_at < started_after);
    assert!(journal_is_empty(&config));
    assert!(helpers_of(&config).is_empty(), "{:?}", helpers_of(&config));
    assert!(!config.state_dir().join("ignition-restore.json").exists());

    // The safety backup holds what the restore replaced.
    let backups = list(&agent).await;
    let safety = backups
        .iter()
        .find(|b| b.id.ends_with("_pre-restore.tar.gz.enc"))
        .unwrap_or_else(|| panic!("no safety backup: {backups:?}"));
    let held = decrypt_into_tar(
        &ignition_file(&config, &safety.id),
        &config.key_file(),
        "tzf -",
    );
    assert!(held.lines().any(|l| l == "./stale.txt"), "{held}");
    assert!(held.lines().any(|l| l == "./db/leftover"), "{held}");
}

/// `backup.compression = "zstd"`: `.tar.zst.enc`, read by `zstd -d | tar`,
/// verified and restored by the agent (its safety backup zstd too).
#[tokio::test(flavor = "multi_thread")]
async fn a_zstd_snapshot_extracts_with_zstd_and_restores_exactly() {
    let Stack {
        bus,
        volume,
        gateway: _gateway,
        config,
        agent,
    } = Stack::start(
        Volume::create_populated(),
        true,
        AgentConfig::new().with("backup.compression", "zstd"),
        |_| {},
    )
    .await;
    let original = listing(&volume);
    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    let id = &made.files[0];
    assert!(
        id.starts_with("ignition_") && id.ends_with(".tar.zst.enc"),
        "{id}"
    );
    let extracted = tempfile::tempdir().unwrap();
    decrypt_into_tar(
        &ignition_file(&config, id),
        &config.key_file(),
        &format!(
            "--zstd -xpf - --numeric-owner -C '{}'",
            extracted.path().display()
        ),
    );
    assert_same_listing(
        &listing_of_dir(extracted.path()),
        &original,
        "decrypt | zstd -d | tar x on the host",
    );
    let out = mesbakctl(&bus).args(["verify", id]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    volume.clear();
    volume.sh("printf stale > stale.txt");
    let restored = restore(&agent, id, false).await;
    assert!(restored.success, "{}", restored.message);
    assert_same_listing(&listing(&volume), &original, "after the restore");
    let safety = list(&agent)
        .await
        .into_iter()
        .find(|b| b.id.ends_with("_pre-restore.tar.zst.enc"))
        .expect("a zstd safety backup");
    let held = decrypt_into_tar(
        &ignition_file(&config, &safety.id),
        &config.key_file(),
        "--zstd -tf -",
    );
    assert!(held.lines().any(|l| l == "./stale.txt"), "{held}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_backup_changes_nothing_not_even_the_gateway() {
    let Stack {
        bus: _bus,
        volume,
        gateway,
        config,
        agent,
    } = Stack::populated().await;
    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    let id = made.files[0].clone();
    volume.sh("printf changed > logs/wrapper.log; mkdir -p added");
    let live = exact_listing(&volume);
    let (started, _) = container_times(gateway.name());

    let file = ignition_file(&config, &id);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    let outcome = restore(&agent, &id, false).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "Integrity", "{}", outcome.message);
    assert!(outcome.message.contains(&id), "{}", outcome.message);

    assert_same_listing(&exact_listing(&volume), &live, "after a refused restore");
    assert_eq!(
        container_times(gateway.name()).0,
        started,
        "the gateway was stopped for a backup that could not be read"
    );
    assert!(gateway.is_running());
    assert_eq!(list(&agent).await.len(), 1, "no safety backup was due");
    assert!(helpers_of(&config).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_without_room_for_the_staged_copy_is_refused_before_the_gateway_stops() {
    let volume = Volume::create_small(120);
    volume.populate();
    volume.sh("head -c 30000000 /dev/urandom > big.bin");
    let Stack {
        bus: _bus,
        volume,
        gateway,
        config,
        agent,
    } = Stack::start(volume, true, AgentConfig::new(), |_| {}).await;
    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    let id = made.files[0].clone();
    // Leave about 10 MiB: the restore stages ~30 MB beside the live files.
    volume.sh(
        "free=$(df -Pk . | awk 'NR==2 {print $4}'); head -c $(( (free - 10240) * 1024 )) /dev/zero > filler",
    );
    let live = exact_listing(&volume);
    let (started, _) = container_times(gateway.name());

    let outcome = restore(&agent, &id, false).await;
    assert!(!outcome.success);
    assert_eq!(outcome.error_name, "NoSpace", "{}", outcome.message);
    assert!(
        outcome.message.contains("free") && outcome.message.contains("nothing was changed"),
        "{}",
        outcome.message
    );
    assert_same_listing(&exact_listing(&volume), &live, "after a refused restore");
    assert_eq!(
        container_times(gateway.name()).0,
        started,
        "the gateway was stopped for a restore that could not fit"
    );
    assert_eq!(list(&agent).await.len(), 1, "no safety backup was due");
    assert!(helpers_of(&config).is_empty());
}

/// One tar entry (ustar), padded.
fn tar_entry(name: &str, typeflag: u8, mode: u32, data: &[u8], link: &str) -> Vec<u8> {
    let mut block = vec![0u8; 512];
    block[..name.len()].copy_from_slice(name.as_bytes());
    let mut put = |at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}\0", w = width - 1);
        block[at..at + width].copy_from_slice(text.as_bytes());
    };
    put(100, 8, u64::from(mode));
    put(108, 8, 0);
    put(116, 8, 0);
    put(124, 12, data.len() as u64);
    put(136, 12, 1_700_000_000);
    block[156] = typeflag;
    block[157..157 + link.len()].copy_from_slice(link.as_bytes());
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    block.extend_from_slice(data);
    block.resize(block.len().div_ceil(512) * 512, 0);
    block
}

/// Writes `tar`, gzipped and encrypted with the agent's key, as an Ignition
/// backup named `id` (no metadata).
fn plant_backup(config: &AgentConfig, id: &str, tar: &[u8]) {
    let gz = run(Command::new("gzip").arg("-c"), Some(tar))
        .unwrap()
        .stdout;
    let path = ignition_file(config, id);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let mut encryptor = mesbak_format::Encryptor::new(file, &config.key()).unwrap();
    std::io::Write::write_all(&mut encryptor, &gz).unwrap();
    encryptor.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_half_way_through_the_extraction_leave_the_volume_as_it_was() {
    let Stack {
        bus: _bus,
        volume,
        gateway,
        config,
        agent,
    } = Stack::populated().await;
    let live = exact_listing(&volume);

    // Authentic and well-formed up to a hard link to nothing: Docker has
    // extracted several MiB when it gives up.
    let mut tar = tar_entry("./", b'5', 0o755, b"", "");
    tar.extend(tar_entry("./good/", b'5', 0o755, b"", ""));
    for i in 0..4 {
        tar.extend(tar_entry(
            &format!("./good/part{i}"),
            b'0',
            0o644,
            &vec![b'a' + i as u8; 1 << 20],
            "",
        ));
    }
    let mut broken_link = tar.clone();
    broken_link.extend(tar_entry("./bad", b'1', 0o644, b"", "./missing"));
    broken_link.extend(vec![0u8; 1024]);
    plant_backup(
        &config,
        "ignition_2020-01-01_000000.tar.gz.enc",
        &broken_link,
    );
    // Authentic, but the archive stops without its end (cut at an entry).
    plant_backup(&config, "ignition_2020-01-02_000000.tar.gz.enc", &tar);

    for (id, error_name) in [
        ("ignition_2020-01-01_000000.tar.gz.enc", "Docker"),
        ("ignition_2020-01-02_000000.tar.gz.enc", "Integrity"),
    ] {
        let outcome = restore(&agent, id, true).await;
        assert!(!outcome.success, "{id} was restored");
        assert_eq!(outcome.error_name, error_name, "{}", outcome.message);
        assert!(
            outcome.message.contains("was not changed"),
            "{}",
            outcome.message
        );
        assert_same_listing(&exact_listing(&volume), &live, id);
        assert!(gateway.is_running(), "the gateway was left stopped");
        assert!(journal_is_empty(&config));
        assert!(helpers_of(&config).is_empty(), "{:?}", helpers_of(&config));
        assert!(!config.state_dir().join("ignition-restore.json").exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_while_the_gateway_is_stopped_restarts_it_at_its_next_start() {
    let volume = Volume::create_populated();
    volume.sh("head -c 157286400 /dev/urandom > big.bin");
    // The helper from the gateway's own image (ignition.helper_image = "").
    let Stack {
        bus,
        volume,
        gateway,
        config,
        mut agent,
    } = Stack::start(volume, true, AgentConfig::new(), |config| {
        config.set("ignition.helper_image", "");
    })
    .await;
    let live = listing(&volume);

    // Killed during the copy of a backup.
    let job = agent.proxy().await.backup("ignition").await.unwrap();
    // The stage is set once the gateway is stopped; the copy takes about a
    // second from then on.
    wait_for_progress(agent.connection(), &job, "copying volume", 0).await;
    assert!(!gateway.is_running(), "the gateway ran during the copy");
    agent.kill9();
    assert!(!gateway.is_running());
    assert!(
        !journal_is_empty(&config),
        "the stop was not recorded first"
    );
    let agent = Agent::spawn(&bus, &config).await;
    assert!(
        gateway.is_running(),
        "the next start did not restart the gateway"
    );
    assert!(journal_is_empty(&config));
    let names: Vec<String> = std::fs::read_dir(config.backup_dir().join("ignition"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with('.')),
        "a complete-looking file after the crash: {names:?}"
    );
    drop(agent);

    // A good backup of this state, then a change, then a restore killed
    // while it extracts.
    let agent = Agent::spawn(&bus, &config).await;
    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    assert!(helpers_of(&config).is_empty(), "{:?}", helpers_of(&config));
    assert_same_listing(&listing(&volume), &live, "after a backup");
    volume.sh("printf changed > logs/wrapper.log; rm -rf projects; mkdir newer");
    let changed = exact_listing(&volume);
    drop(agent);
    let mut agent = Agent::spawn(&bus, &config).await;
    let job = agent
        .proxy()
        .await
        .restore(
            &made.files[0],
            RestoreOptions {
                skip_safety_backup: Some(true),
            },
        )
        .await
        .unwrap();
    wait_for_progress(agent.connection(), &job, "extracting", 8 << 20).await;
    assert!(!gateway.is_running());
    agent.kill9();
    assert!(config.state_dir().join("ignition-restore.json").exists());

    let agent = Agent::spawn(&bus, &config).await;
    assert!(
        gateway.is_running(),
        "the next start did not restart the gateway"
    );
    // The next Ignition job (or the start-up, where wired) removes the
    // staged files and the helper first.
    let after = backup(&agent, "ignition").await;
    assert!(after.success, "{}", after.message);
    assert_same_listing(
        &exact_listing(&volume),
        &changed,
        "after a restore cut short",
    );
    assert!(!config.state_dir().join("ignition-restore.json").exists());
    assert!(helpers_of(&config).is_empty(), "{:?}", helpers_of(&config));
    assert!(gateway.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_volume_container_or_image_are_named_with_what_to_do() {
    let bus = Bus::start();
    let volume = Volume::create_populated();
    let gateway = Gateway::start(&volume);
    let (started, _) = container_times(gateway.name());
    let missing = format!("mesbak-test-missing-{}", random_hex(4));
    let cases: [(&str, &str, toml::Value, &[&str]); 3] = [
        (
            "ignition.volume",
            "NotFound",
            missing.clone().into(),
            &[
                "volume",
                "does not exist",
                "docker volume ls",
                "ignition.volume",
            ],
        ),
        (
            "ignition.stop_containers",
            "NotFound",
            vec![gateway.name().to_owned(), missing.clone()].into(),
            &["container", "does not exist", "ignition.stop_containers"],
        ),
        (
            "ignition.helper_image",
            "NotFound",
            format!("mesbak-test/{missing}").into(),
            &["image", "not on this host", "ignition.helper_image"],
        ),
    ];
    for (key, error_name, value, words) in cases {
        let mut config = AgentConfig::new();
        config.ignition(&volume, &[&gateway]).set(key, value);
        let agent = Agent::spawn(&bus, &config).await;
        let outcome = backup(&agent, "ignition").await;
        assert!(!outcome.success, "{key}");
        assert_eq!(outcome.error_name, error_name, "{}", outcome.message);
        assert!(outcome.message.contains(&missing), "{}", outcome.message);
        for word in words {
            assert!(outcome.message.contains(word), "{key}: {}", outcome.message);
        }
        assert!(list(&agent).await.is_empty());
        assert!(helpers_of(&config).is_empty());
    }
    assert_eq!(
        container_times(gateway.name()).0,
        started,
        "the gateway was touched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_container_on_the_volume_is_warned_about_and_blocks_a_restore() {
    let Stack {
        bus: _bus,
        volume,
        gateway,
        config: _config,
        agent,
    } = Stack::populated().await;
    let other = Gateway::start(&volume);
    let (other_started, _) = container_times(other.name());

    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    assert_eq!(made.warnings.len(), 1, "{:?}", made.warnings);
    for word in [other.name(), volume.name(), "inconsistent"] {
        assert!(made.warnings[0].contains(word), "{}", made.warnings[0]);
    }
    let info = &list(&agent).await[0];
    assert_eq!(
        info.warnings, made.warnings,
        "the metadata keeps the warning"
    );

    let live = exact_listing(&volume);
    let outcome = restore(&agent, &made.files[0], false).await;
    assert!(!outcome.success);
    assert!(
        outcome.message.contains(other.name()) && outcome.message.contains("nothing was changed"),
        "{}",
        outcome.message
    );
    assert_same_listing(&exact_listing(&volume), &live, "after a refused restore");
    assert_eq!(
        container_times(other.name()).0,
        other_started,
        "the other container was touched"
    );
    assert!(other.is_running() && gateway.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_gateway_stays_stopped_and_costs_no_downtime() {
    let Stack {
        bus: _bus,
        volume,
        gateway,
        config,
        agent,
    } = Stack::start(
        Volume::create_populated(),
        false,
        AgentConfig::new(),
        |_| {},
    )
    .await;
    let original = listing(&volume);

    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    assert!(!gateway.is_running(), "a stopped gateway was started");
    assert_eq!(list(&agent).await[0].downtime_ms, 0);

    volume.sh("rm -rf db; printf new > db");
    let restored = restore(&agent, &made.files[0], true).await;
    assert!(restored.success, "{}", restored.message);
    assert_same_listing(
        &listing(&volume),
        &original,
        "restore over a file where a folder was",
    );
    assert!(!gateway.is_running(), "a stopped gateway was started");
    assert!(journal_is_empty(&config));
}

async fn backup_all_gives_both_halves_one_timestamp(flavor: Flavor) {
    let pg = Postgres::with_fixture_on(flavor);
    let Stack {
        bus: _bus,
        volume: _volume,
        gateway,
        config: _config,
        agent,
    } = Stack::start(
        Volume::create_populated(),
        true,
        AgentConfig::for_postgres(&pg),
        |_| {},
    )
    .await;
    let outcome = backup(&agent, "all").await;
    assert!(outcome.success, "{}", outcome.message);
    assert_eq!(outcome.files.len(), 2, "{:?}", outcome.files);
    let backups = list(&agent).await;
    let database = backups.iter().find(|b| b.id.starts_with("mes_")).unwrap();
    let ignition = backups
        .iter()
        .find(|b| b.id.starts_with("ignition_"))
        .unwrap();
    assert_eq!(database.restore_point, ignition.restore_point);
    assert_eq!(
        database
            .id
            .trim_start_matches("mes_")
            .trim_end_matches(".sql.gz.enc"),
        ignition
            .id
            .trim_start_matches("ignition_")
            .trim_end_matches(".tar.gz.enc"),
    );
    assert!(ignition.downtime_ms > 0);
    assert!(gateway.is_running());
}

/// The agent's record of a restore in progress (`ignition-restore.json`),
/// written by hand to stand for one cut short at a chosen point.
fn write_restore_record(
    config: &AgentConfig,
    volume: &Volume,
    root: &str,
    restored_root: serde_json::Value,
) {
    let fields: Vec<&str> = root.split_whitespace().collect();
    let nanos: u32 = fields[5]
        .split_once('.')
        .map(|(_, f)| format!("{:0<9}", &f[..f.len().min(9)]).parse().unwrap())
        .unwrap_or(0);
    let record = serde_json::json!({
        "volume": volume.name(),
        "image": BUSYBOX,
        "staging": ".mesbak-restore-t1",
        "old": ".mesbak-old-t1",
        "backup": "ignition_2020-01-01_000000.tar.gz.enc",
        "root": {
            "mode": u32::from_str_radix(fields[0], 8).unwrap(),
            "uid": fields[1].parse::<u64>().unwrap(),
            "gid": fields[2].parse::<u64>().unwrap(),
            "mtime": fields[3].parse::<i64>().unwrap(),
            "nanos": nanos,
        },
        "restored_root": restored_root,
    });
    std::fs::create_dir_all(config.state_dir()).unwrap();
    std::fs::write(
        config.state_dir().join("ignition-restore.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_cut_short_is_undone_or_finished_by_the_next_job() {
    let Stack {
        bus: _bus,
        volume,
        gateway: _gateway,
        config,
        agent,
    } = Stack::populated().await;
    let restored_root = serde_json::json!({
        "mode": 0o751, "uid": 1000, "gid": 1000, "mtime": 1_600_000_000, "nanos": 0
    });
    const RESTORED: &str = "mkdir -p \"$1/sub dir\" && printf new > \"$1/new.txt\" && printf deep > \"$1/sub dir/deep\" && ln -s new.txt \"$1/link\" && touch -h -d '2021-01-01 00:00:00' \"$1/sub dir/deep\" \"$1/sub dir\" \"$1/new.txt\" \"$1/link\"";

    // Cut short while the old files were being moved aside: undone.
    let found = exact_listing(&volume);
    let root = volume.sh("stat -c '%a %u %g %Y %y' .");
    volume.sh(&format!(
        "set -- .mesbak-restore-t1; mkdir -m 0700 \"$1\"; {RESTORED}; mkdir -m 0700 .mesbak-old-t1; mv db logs .uuid .mesbak-old-t1/"
    ));
    write_restore_record(&config, &volume, &root, restored_root.clone());
    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    assert_same_listing(&exact_listing(&volume), &found, "a swap undone");
    assert!(!config.state_dir().join("ignition-restore.json").exists());

    // Cut short while the restored files were being moved in: finished.
    let expected = Volume::create();
    expected.sh(&format!(
        "set -- /data; {RESTORED}; chown 1000:1000 /data; chmod 0751 /data; touch -d @1600000000 /data"
    ));
    let root = volume.sh("stat -c '%a %u %g %Y %y' .");
    volume.sh(&format!(
        "set -- .mesbak-restore-t1; mkdir -m 0700 \"$1\"; {RESTORED}; mkdir -m 0700 .mesbak-old-t1; \
         for e in * .[!.]*; do case \"$e\" in .mesbak-*) ;; *) mv \"$e\" .mesbak-old-t1/ ;; esac; done; \
         : > .mesbak-old-t1/.mesbak-moved-aside; mv .mesbak-restore-t1/new.txt ."
    ));
    write_restore_record(&config, &volume, &root, restored_root);
    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    assert_same_listing(&listing(&volume), &listing(&expected), "a swap finished");
    assert!(!config.state_dir().join("ignition-restore.json").exists());
    assert!(helpers_of(&config).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_volume_backup_and_restore_leave_nothing_behind() {
    let volume = Volume::create_populated();
    volume.sh("head -c 157286400 /dev/urandom > big.bin");
    let Stack {
        bus: _bus,
        volume,
        gateway,
        config,
        agent,
    } = Stack::start(volume, true, AgentConfig::new(), |_| {}).await;
    let cancel = |job: OwnedObjectPath| {
        let conn = agent.connection().clone();
        async move { job_proxy(&conn, job.as_str()).await.cancel().await.unwrap() }
    };

    // A backup cancelled during the copy: no file, the gateway running again.
    let job = agent.proxy().await.backup("ignition").await.unwrap();
    wait_for_progress(agent.connection(), &job, "copying volume", 0).await;
    cancel(job.clone()).await;
    let outcome = finish(&agent, job).await;
    assert_eq!(outcome.error_name, "Cancelled", "{}", outcome.message);
    let names: Vec<String> = std::fs::read_dir(config.backup_dir().join("ignition"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
    assert!(gateway.is_running(), "the gateway was left stopped");
    assert!(journal_is_empty(&config));
    assert!(helpers_of(&config).is_empty(), "{:?}", helpers_of(&config));

    // A restore cancelled while it extracts: the volume as it was.
    let made = backup(&agent, "ignition").await;
    assert!(made.success, "{}", made.message);
    volume.sh("printf changed > logs/wrapper.log; mkdir newer");
    let changed = exact_listing(&volume);
    let job = agent
        .proxy()
        .await
        .restore(
            &made.files[0],
            RestoreOptions {
                skip_safety_backup: Some(true),
            },
        )
        .await
        .unwrap();
    wait_for_progress(agent.connection(), &job, "extracting", 8 << 20).await;
    cancel(job.clone()).await;
    let outcome = finish(&agent, job).await;
    assert_eq!(outcome.error_name, "Cancelled", "{}", outcome.message);
    assert!(
        outcome.message.contains("was not changed"),
        "{}",
        outcome.message
    );
    assert_same_listing(
        &exact_listing(&volume),
        &changed,
        "after a cancelled restore",
    );
    assert!(gateway.is_running());
    assert!(!config.state_dir().join("ignition-restore.json").exists());
    assert!(helpers_of(&config).is_empty(), "{:?}", helpers_of(&config));
}

on_both_servers!(backup_all_gives_both_halves_one_timestamp);
