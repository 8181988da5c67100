//! The PITR catalog as pure logic: WAL file names, the chain of segments
//! each base backup needs, the restorable window and its gaps, what a
//! point-in-time restore needs, and what retention may delete.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A physical base backup, as its metadata records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseInfo {
    pub id: String,
    /// When pg_basebackup started and finished (RFC 3339, UTC).
    pub started: String,
    pub finished: String,
    pub timeline: u32,
    /// The WAL segment the backup starts in (from its backup_label).
    pub start_wal: String,
    pub start_lsn: String,
    pub wal_segment_size: u64,
    pub size_bytes: u64,
    pub sha256: String,
    pub server_version: String,
    pub timescaledb_version: String,
}

/// What a shipped WAL file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalKind {
    /// A segment: its timeline and its position in the WAL.
    Segment { timeline: u32, number: u64 },
    /// `<timeline>.history`.
    History,
    /// `<segment>.<offset>.backup`: a base backup's start and stop.
    BackupLabel,
}

/// A WAL file in the backup folder: `<wal name>_<archived>.gz.enc`.
#[derive(Debug, Clone, PartialEq)]
pub struct WalFile {
    /// The server's name of it (`000000010000000000000003`).
    pub name: String,
    pub kind: WalKind,
    /// When the server archived it: every commit in it happened before.
    pub archived_at: OffsetDateTime,
    /// The file's name in the backup folder.
    pub file_name: String,
}

pub const WAL_SUFFIX: &str = ".gz.enc";

/// `20261201T181849Z`: the archive time in a file name.
const STAMP: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// The backup-folder name of a WAL file archived at `at`.
pub fn wal_file_name(name: &str, at: OffsetDateTime) -> String {
    let stamp = at
        .to_offset(time::UtcOffset::UTC)
        .format(STAMP)
        .expect("formatting a time cannot fail");
    format!("{name}_{stamp}{WAL_SUFFIX}")
}

/// Whether `name` is a file the server's archive may hold (and the agent
/// ships): a segment, a history file or a backup label. Anything else
/// (partial copies, strays) is left alone.
pub fn is_wal_name(name: &str) -> bool {
    kind_of(name, 16 << 20).is_some()
}

fn is_hex(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
}

fn kind_of(name: &str, segment_size: u64) -> Option<WalKind> {
    if name.len() == 24 && is_hex(name) {
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_log = 0x1_0000_0000 / segment_size.max(1);
        return Some(WalKind::Segment {
            timeline,
            number: log * per_log + seg,
        });
    }
    if let Some(timeline) = name.strip_suffix(".history") {
        return (timeline.len() == 8 && is_hex(timeline)).then_some(WalKind::History);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        let (segment, offset) = rest.split_once('.')?;
        return (segment.len() == 24 && is_hex(segment) && offset.len() == 8 && is_hex(offset))
            .then_some(WalKind::BackupLabel);
    }
    None
}

/// Reads a backup-folder WAL file name; None for anything else.
pub fn parse_wal_file(file_name: &str, segment_size: u64) -> Option<WalFile> {
    let stem = file_name.strip_suffix(WAL_SUFFIX)?;
    let (name, stamp) = stem.rsplit_once('_')?;
    let archived_at = time::PrimitiveDateTime::parse(stamp, STAMP)
        .ok()?
        .assume_utc();
    Some(WalFile {
        name: name.to_owned(),
        kind: kind_of(name, segment_size)?,
        archived_at,
        file_name: file_name.to_owned(),
    })
}

/// The server's name of segment `number` on `timeline`.
pub fn segment_name(timeline: u32, number: u64, segment_size: u64) -> String {
    let per_log = 0x1_0000_0000 / segment_size.max(1);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        number / per_log,
        number % per_log
    )
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// One stretch of time a point-in-time restore can reach.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    /// The base backup it starts from.
    pub base: String,
}

/// The restorable window and what is wrong with the chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Window {
    /// Newest last; they may overlap.
    pub ranges: Vec<Range>,
    /// Segments missing between the oldest kept base backup and the newest
    /// shipped segment.
    pub gaps: Vec<String>,
    /// The newest shipped segment and when the server archived it.
    pub newest: Option<(String, OffsetDateTime)>,
}

impl Window {
    /// From the oldest reachable time to the newest.
    pub fn span(&self) -> Option<(OffsetDateTime, OffsetDateTime)> {
        let from = self.ranges.iter().map(|r| r.from).min()?;
        let to = self.ranges.iter().map(|r| r.to).max()?;
        Some((from, to))
    }

    /// Whether `at` can be reached.
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        self.ranges.iter().any(|r| r.from <= at && at <= r.to)
    }
}

/// Segments of one timeline by number.
fn segments_by_number(wal: &[WalFile], timeline: u32) -> BTreeMap<u64, &WalFile> {
    wal.iter()
        .filter_map(|file| match file.kind {
            WalKind::Segment {
                timeline: t,
                number,
            } if t == timeline => Some((number, file)),
            _ => None,
        })
        .collect()
}

pub fn start_number(base: &BaseInfo) -> Option<u64> {
    match kind_of(&base.start_wal, base.wal_segment_size)? {
        WalKind::Segment { number, .. } => Some(number),
        _ => None,
    }
}

/// The restorable window: for each base backup, from its end to the last
/// segment of the unbroken chain after its start.
pub fn window(bases: &[BaseInfo], wal: &[WalFile]) -> Window {
    let mut out = Window::default();
    let mut ordered: Vec<&BaseInfo> = bases.iter().collect();
    ordered.sort_by(|a, b| a.finished.cmp(&b.finished));
    let segment_size = bases.first().map_or(16 << 20, |b| b.wal_segment_size);
    for base in &ordered {
        let (Some(start), Some(finished)) = (start_number(base), parse_time(&base.finished)) else {
            continue;
        };
        let chain = segments_by_number(wal, base.timeline);
        let mut number = start;
        let mut last = None;
        while let Some(file) = chain.get(&number) {
            last = Some(file.archived_at);
            number += 1;
        }
        if let Some(to) = last.filter(|to| *to >= finished) {
            out.ranges.push(Range {
                from: finished,
                to,
                base: base.id.clone(),
            });
        }
    }
    // Gaps from the oldest base backup's start to the newest segment.
    if let Some(oldest) = ordered.first() {
        if let Some(start) = start_number(oldest) {
            let chain = segments_by_number(wal, oldest.timeline);
            if let Some((&newest, _)) = chain.iter().next_back() {
                for number in start..newest {
                    if !chain.contains_key(&number) {
                        out.gaps
                            .push(segment_name(oldest.timeline, number, segment_size));
                    }
                }
            }
        }
    }
    out.newest = wal
        .iter()
        .filter(|f| matches!(f.kind, WalKind::Segment { .. }))
        .max_by(|a, b| a.name.cmp(&b.name))
        .map(|f| (f.name.clone(), f.archived_at));
    out
}

/// What a point-in-time restore to `target` uses: the newest base backup
/// finished by then and the segments from its start up to the first one
/// archived at or after `target`, which normally holds the last commits
/// before `target`. Normally: a segment is archived after it is written
/// full, so the next one may begin before `target` (by up to the second
/// an archive time is rounded to, or by much more when archiving lagged
/// and caught up in a burst). The segments after it are `later`, fed to
/// the recovery only while it has not yet passed `target`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryPlan {
    pub base: BaseInfo,
    pub segments: Vec<WalFile>,
    /// The segments after `segments`, in order, that may still hold a
    /// commit before `target`: those archived within [`LATER_HORIZON`] of
    /// it, and any archived in one burst with the one before (a backlog
    /// archived at once, however late); up to the chain's end or a gap.
    pub later: Vec<WalFile>,
}

/// How long after the target a segment's archive time may be and it is
/// still fed to a recovery that has not passed the target. Beyond it (and
/// outside a burst) the recovery ends at the end of what it was given: a
/// quiet server would otherwise have every later segment read.
pub const LATER_HORIZON: time::Duration = time::Duration::minutes(10);
/// Segments archived within this of the one before belong to one burst.
const BURST: time::Duration = time::Duration::seconds(2);

pub fn plan_recovery(
    bases: &[BaseInfo],
    wal: &[WalFile],
    target: OffsetDateTime,
) -> Option<RecoveryPlan> {
    let mut candidates: Vec<&BaseInfo> = bases
        .iter()
        .filter(|b| parse_time(&b.finished).is_some_and(|f| f <= target))
        .collect();
    candidates.sort_by(|a, b| b.finished.cmp(&a.finished));
    for base in candidates {
        let Some(mut number) = start_number(base) else {
            continue;
        };
        let chain = segments_by_number(wal, base.timeline);
        let mut segments = Vec::new();
        while let Some(file) = chain.get(&number) {
            segments.push((*file).clone());
            number += 1;
            if file.archived_at >= target {
                let mut previous = file.archived_at;
                let later = (number..)
                    .map_while(|n| chain.get(&n))
                    .take_while(|f| {
                        let near = f.archived_at <= target + LATER_HORIZON
                            || f.archived_at - previous < BURST;
                        previous = f.archived_at;
                        near
                    })
                    .map(|f| (*f).clone())
                    .collect();
                return Some(RecoveryPlan {
                    base: base.clone(),
                    segments,
                    later,
                });
            }
        }
    }
    None
}

/// What retention may delete: base backups that finished more than
/// `keep_days` ago, except the newest of those (it starts the window) and
/// at least `keep_last` base backups; then every WAL file older than the
/// oldest kept base backup's start. Never a segment a kept base needs.
pub fn plan_retention(
    bases: &[BaseInfo],
    wal: &[WalFile],
    now: OffsetDateTime,
    keep_days: u32,
    keep_last: usize,
) -> (Vec<BaseInfo>, Vec<WalFile>) {
    let mut ordered: Vec<&BaseInfo> = bases.iter().collect();
    ordered.sort_by(|a, b| b.finished.cmp(&a.finished)); // newest first
    let horizon = now - time::Duration::days(i64::from(keep_days));
    let mut kept = Vec::new();
    let mut delete = Vec::new();
    let mut covered_horizon = false;
    for (index, base) in ordered.iter().enumerate() {
        let finished = parse_time(&base.finished);
        let young = finished.is_none_or(|f| f >= horizon);
        // A base backup from the future (a clock that jumped) never drives
        // deletion: it is kept and the older ones with it.
        let future = finished.is_some_and(|f| f > now);
        if young || future || index < keep_last || !covered_horizon {
            if !young {
                covered_horizon = true;
            }
            kept.push(*base);
        } else {
            delete.push((*base).clone());
        }
    }
    let Some(oldest_kept) = kept.last() else {
        return (delete, Vec::new());
    };
    let (timeline, start) = match start_number(oldest_kept) {
        Some(start) => (oldest_kept.timeline, start),
        None => return (delete, Vec::new()),
    };
    let oldest_started = oldest_kept.start_wal.clone();
    let wal_delete = wal
        .iter()
        .filter(|file| match file.kind {
            WalKind::Segment {
                timeline: t,
                number,
            } => t < timeline || (t == timeline && number < start),
            // Labels of backups that started before the oldest kept one.
            WalKind::BackupLabel => file.name[..24] < *oldest_started,
            WalKind::History => false,
        })
        .cloned()
        .collect();
    (delete, wal_delete)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn at(text: &str) -> OffsetDateTime {
        parse_time(text).unwrap()
    }

    fn wal(number: u64, archived: &str) -> WalFile {
        let name = segment_name(1, number, SEG);
        parse_wal_file(&wal_file_name(&name, at(archived)), SEG).unwrap()
    }

    fn base(id: &str, start: u64, finished: &str) -> BaseInfo {
        BaseInfo {
            id: id.into(),
            started: finished.into(),
            finished: finished.into(),
            timeline: 1,
            start_wal: segment_name(1, start, SEG),
            start_lsn: String::new(),
            wal_segment_size: SEG,
            size_bytes: 0,
            sha256: String::new(),
            server_version: String::new(),
            timescaledb_version: String::new(),
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_name(1, 3, SEG), "000000010000000000000003");
        assert_eq!(segment_name(1, 256, SEG), "000000010000000100000000");
        let file = wal_file_name("000000010000000100000000", at("2026-12-01T18:18:49Z"));
        assert_eq!(file, "000000010000000100000000_20261201T181849Z.gz.enc");
        let parsed = parse_wal_file(&file, SEG).unwrap();
        assert_eq!(
            parsed.kind,
            WalKind::Segment {
                timeline: 1,
                number: 256
            }
        );
        assert!(is_wal_name("00000002.history"));
        assert!(is_wal_name("000000010000000000000003.00000028.backup"));
        assert!(!is_wal_name("000000010000000000000003.partial"));
        assert!(!is_wal_name("archtemp.000000010000000000000003"));
        assert!(!is_wal_name("00000001000000000000000g"));
        assert!(parse_wal_file("junk.gz.enc", SEG).is_none());
    }

    #[test]
    fn the_window_runs_from_a_base_to_its_unbroken_chain() {
        let bases = [base("b1", 3, "2026-12-01T10:00:00Z")];
        let files = [
            wal(3, "2026-12-01T10:00:05Z"),
            wal(4, "2026-12-01T10:01:00Z"),
            wal(5, "2026-12-01T10:02:00Z"),
            // 6 is missing
            wal(7, "2026-12-01T10:04:00Z"),
        ];
        let w = window(&bases, &files);
        assert_eq!(w.ranges.len(), 1);
        assert_eq!(w.ranges[0].from, at("2026-12-01T10:00:00Z"));
        assert_eq!(w.ranges[0].to, at("2026-12-01T10:02:00Z"));
        assert_eq!(w.gaps, vec![segment_name(1, 6, SEG)]);
        assert_eq!(w.newest.as_ref().unwrap().0, segment_name(1, 7, SEG));
        assert!(w.contains(at("2026-12-01T10:01:30Z")));
        assert!(!w.contains(at("2026-12-01T10:03:00Z")), "past the gap");
        assert!(!w.contains(at("2026-12-01T09:59:00Z")), "before the base");

        // A later base backup bridges the gap.
        let bases = [
            base("b1", 3, "2026-12-01T10:00:00Z"),
            base("b2", 7, "2026-12-01T10:03:30Z"),
        ];
        let w = window(&bases, &files);
        assert!(w.contains(at("2026-12-01T10:03:50Z")));
        let plan = plan_recovery(&bases, &files, at("2026-12-01T10:03:50Z")).unwrap();
        assert_eq!(plan.base.id, "b2");
    }

    #[test]
    fn recovery_takes_segments_up_to_the_target() {
        let bases = [base("b1", 3, "2026-12-01T10:00:00Z")];
        let files = [
            wal(3, "2026-12-01T10:00:05Z"),
            wal(4, "2026-12-01T10:01:00Z"),
            wal(5, "2026-12-01T10:02:00Z"),
        ];
        let plan = plan_recovery(&bases, &files, at("2026-12-01T10:00:30Z")).unwrap();
        let names: Vec<&str> = plan.segments.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [segment_name(1, 3, SEG), segment_name(1, 4, SEG)]);
        let later: Vec<&str> = plan.later.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(later, [segment_name(1, 5, SEG)], "the rest of the chain");
        // Far after the target: only a burst with the one before is fed.
        let files = [
            wal(3, "2026-12-01T10:00:05Z"),
            wal(4, "2026-12-01T10:01:00Z"),
            wal(5, "2026-12-01T10:05:00Z"),
            wal(6, "2026-12-01T11:00:00Z"),
            wal(7, "2026-12-01T11:00:01Z"),
            wal(8, "2026-12-01T11:01:00Z"),
        ];
        let plan = plan_recovery(&bases, &files, at("2026-12-01T10:00:30Z")).unwrap();
        assert_eq!(
            plan.later.len(),
            1,
            "within ten minutes only: {:?}",
            plan.later
        );
        let plan = plan_recovery(&bases, &files, at("2026-12-01T10:04:30Z")).unwrap();
        assert!(plan.later.is_empty(), "an hour later, not in a burst");
        let late = [
            wal(3, "2026-12-01T10:00:05Z"),
            wal(4, "2026-12-01T12:00:00Z"),
            wal(5, "2026-12-01T12:00:00Z"),
            wal(6, "2026-12-01T12:00:01Z"),
            wal(7, "2026-12-01T12:01:00Z"),
        ];
        let plan = plan_recovery(&bases, &late, at("2026-12-01T10:00:30Z")).unwrap();
        let later: Vec<&str> = plan.later.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            later,
            [segment_name(1, 5, SEG), segment_name(1, 6, SEG)],
            "a backlog archived in one burst, hours late"
        );
        let files = [
            files[0].clone(),
            files[1].clone(),
            wal(6, "2026-12-01T10:02:00Z"),
        ];
        let plan = plan_recovery(&bases, &files, at("2026-12-01T10:00:30Z")).unwrap();
        assert!(plan.later.is_empty(), "not past a gap");
        assert!(plan_recovery(&bases, &files, at("2026-12-01T10:05:00Z")).is_none());
        assert!(plan_recovery(&bases, &files, at("2026-12-01T09:00:00Z")).is_none());
    }

    #[test]
    fn retention_keeps_the_window_and_never_a_needed_segment() {
        let now = at("2026-12-31T12:00:00Z");
        let bases = [
            base("old", 1, "2026-11-01T00:00:00Z"),
            base("edge", 10, "2026-11-28T00:00:00Z"),
            base("recent", 20, "2026-12-20T00:00:00Z"),
        ];
        let files: Vec<WalFile> = (1..25).map(|n| wal(n, "2026-11-01T00:00:00Z")).collect();
        let (bases_gone, wal_gone) = plan_retention(&bases, &files, now, 30, 1);
        // "edge" finished before the 30-day horizon but starts the window.
        assert_eq!(
            bases_gone.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            ["old"]
        );
        assert_eq!(wal_gone.len(), 9, "segments 1..=9 only");
        assert!(
            wal_gone
                .iter()
                .all(|f| matches!(f.kind, WalKind::Segment { number, .. } if number < 10))
        );

        // A clock far ahead deletes nothing a future-dated base needs.
        let bases = [base("future", 5, "2028-01-01T00:00:00Z")];
        let (gone, wal_gone) = plan_retention(&bases, &files, now, 30, 1);
        assert!(gone.is_empty());
        assert_eq!(wal_gone.len(), 4);
    }
}
