//! Prometheus series of point-in-time recovery, appended to `/metrics`:
//! whether it is on, how far shipping lags behind the server, the
//! restorable window and what the chain holds. Every family is declared
//! even while PITR is off (rules and dashboards refer to them); series
//! without a value (no WAL yet) have no sample.

use mesbak_interface::PitrStatus;
use time::OffsetDateTime;

use crate::health::parse_time;
use crate::http::Family;

/// A pure function of the status and the time, so tests inject both.
pub fn render(out: &mut String, status: &PitrStatus, now: OffsetDateTime) {
    Family::new(
        out,
        "mesbak_pitr_enabled",
        "gauge",
        "Whether continuous WAL archiving is on (1) or off (0).",
    )
    .sample(&[], u8::from(status.enabled));
    let mut lag = Family::new(
        out,
        "mesbak_pitr_wal_lag_seconds",
        "gauge",
        "Time since the newest shipped WAL segment was archived by the server: the most a disk failure now could lose.",
    );
    if let Some(newest) = parse_time(&status.newest_wal_time) {
        lag.sample(&[], (now - newest).as_seconds_f64().max(0.0));
    }
    let window = (
        parse_time(&status.window_from),
        parse_time(&status.window_to),
    );
    let mut start = Family::new(
        out,
        "mesbak_pitr_window_start_timestamp_seconds",
        "gauge",
        "The earliest time a point-in-time restore can reach (Unix seconds).",
    );
    if let (Some(from), Some(_)) = window {
        start.sample(&[], from.unix_timestamp());
    }
    let mut end = Family::new(
        out,
        "mesbak_pitr_window_end_timestamp_seconds",
        "gauge",
        "The latest time a point-in-time restore can reach (Unix seconds).",
    );
    if let (Some(_), Some(to)) = window {
        end.sample(&[], to.unix_timestamp());
    }
    Family::new(
        out,
        "mesbak_pitr_gaps",
        "gauge",
        "Segments missing from the WAL chain (times past one need a newer base backup).",
    )
    .sample(&[], status.gaps.len());
    Family::new(
        out,
        "mesbak_pitr_archive_waiting_files",
        "gauge",
        "WAL files waiting in the server's archive folder at the last shipping round.",
    )
    .sample(&[], status.waiting);
    Family::new(
        out,
        "mesbak_pitr_base_backups",
        "gauge",
        "Base backups in the backup folder.",
    )
    .sample(&[], status.base_backups.len());
    Family::new(
        out,
        "mesbak_pitr_wal_files",
        "gauge",
        "Shipped WAL files in the backup folder.",
    )
    .sample(&[], status.wal_files);
    Family::new(
        out,
        "mesbak_pitr_bytes",
        "gauge",
        "Bytes of base backups and WAL in the backup folder.",
    )
    .sample(&[], status.bytes);
    Family::new(
        out,
        "mesbak_pitr_shipping_failing",
        "gauge",
        "Whether the last shipping round failed (1) or not (0).",
    )
    .sample(&[], u8::from(!status.last_error.is_empty()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> PitrStatus {
        PitrStatus {
            enabled: true,
            enabled_at: "2026-11-30T00:00:00Z".into(),
            archive_directory: "/var/lib/postgresql/data/mesbak_wal".into(),
            base_backups: Vec::new(),
            newest_wal: "000000010000000000000042".into(),
            newest_wal_time: "2026-12-01T10:00:00Z".into(),
            window_from: "2026-11-30T00:00:05Z".into(),
            window_to: "2026-12-01T10:00:00Z".into(),
            gaps: vec!["000000010000000000000007".into()],
            waiting: 3,
            wal_files: 66,
            bytes: 1 << 30,
            last_shipped_at: "2026-12-01T10:00:02Z".into(),
            last_error: String::new(),
        }
    }

    #[test]
    fn lag_window_and_chain_are_series() {
        let now = parse_time("2026-12-01T10:00:30Z").unwrap();
        let mut out = String::new();
        render(&mut out, &status(), now);
        for line in [
            "mesbak_pitr_enabled 1\n",
            "mesbak_pitr_wal_lag_seconds 30\n",
            "mesbak_pitr_window_start_timestamp_seconds 1795996805\n",
            "mesbak_pitr_window_end_timestamp_seconds 1796119200\n",
            "mesbak_pitr_gaps 1\n",
            "mesbak_pitr_archive_waiting_files 3\n",
            "mesbak_pitr_wal_files 66\n",
            "mesbak_pitr_shipping_failing 0\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
    }

    #[test]
    fn declared_but_without_times_when_never_used() {
        let mut out = String::new();
        let off = PitrStatus {
            enabled: false,
            wal_files: 0,
            newest_wal_time: String::new(),
            window_from: String::new(),
            window_to: String::new(),
            ..status()
        };
        render(&mut out, &off, OffsetDateTime::now_utc());
        assert!(out.contains("mesbak_pitr_enabled 0\n"), "{out}");
        assert!(
            out.contains("# TYPE mesbak_pitr_wal_lag_seconds gauge\n"),
            "{out}"
        );
        assert!(!out.contains("\nmesbak_pitr_wal_lag_seconds "), "{out}");
        assert!(
            !out.contains("\nmesbak_pitr_window_start_timestamp_seconds "),
            "{out}"
        );
    }
}
