//! Prometheus series per target (label `target`), appended to `/metrics`.

use mesbak_interface::{Health, OffsiteReport};
use time::OffsetDateTime;

use super::queue::TargetState;
use crate::health::parse_time;
use crate::http::Family;

/// A counter family: name, help, and its value in a target's state.
type Counter = (&'static str, &'static str, fn(&TargetState) -> u64);

/// The off-site families; nothing when no target is configured.
pub fn render(
    out: &mut String,
    reports: &[OffsiteReport],
    state_of: impl Fn(&str) -> TargetState,
    now: OffsetDateTime,
) {
    if reports.is_empty() {
        return;
    }
    let states: Vec<(&OffsiteReport, TargetState)> =
        reports.iter().map(|r| (r, state_of(&r.name))).collect();
    let mut family = Family::new(
        out,
        "mesbak_offsite_health",
        "gauge",
        "Each off-site target's judgement: 1 for its current status, 0 for the others.",
    );
    for (report, _) in &states {
        for health in Health::ALL {
            family.sample(
                &[("target", &report.name), ("status", health.as_str())],
                u8::from(*health == report.status),
            );
        }
    }
    let mut family = Family::new(
        out,
        "mesbak_offsite_last_copy_timestamp_seconds",
        "gauge",
        "Creation time of the newest backup verified on the target (Unix seconds).",
    );
    for (report, _) in &states {
        if let Some(created) = report.newest_copy_created.as_deref().and_then(parse_time) {
            family.sample(&[("target", &report.name)], created.unix_timestamp());
        }
    }
    let mut family = Family::new(
        out,
        "mesbak_offsite_last_copy_age_seconds",
        "gauge",
        "Age of the newest backup verified on the target when the agent answered.",
    );
    for (report, _) in &states {
        if let Some(created) = report.newest_copy_created.as_deref().and_then(parse_time) {
            let age = (now - created).as_seconds_f64().max(0.0);
            family.sample(&[("target", &report.name)], age);
        }
    }
    let mut family = Family::new(
        out,
        "mesbak_offsite_queue_length",
        "gauge",
        "Good local backups not (yet) verified on the target.",
    );
    for (report, _) in &states {
        family.sample(&[("target", &report.name)], report.queue_length);
    }
    let mut family = Family::new(
        out,
        "mesbak_offsite_failing",
        "gauge",
        "1 while a failed copy to the target waits for its retry.",
    );
    for (report, _) in &states {
        family.sample(
            &[("target", &report.name)],
            u8::from(report.last_error.is_some()),
        );
    }
    let counters: [Counter; 3] = [
        (
            "mesbak_offsite_copies_total",
            "Backups copied and verified on the target since the agent's state was created.",
            |s| s.copies_total,
        ),
        (
            "mesbak_offsite_failures_total",
            "Failed copy attempts to the target since the agent's state was created.",
            |s| s.failures_total,
        ),
        (
            "mesbak_offsite_bytes_total",
            "Bytes copied and verified on the target since the agent's state was created.",
            |s| s.bytes_total,
        ),
    ];
    for (name, help, value) in counters {
        let mut family = Family::new(out, name, "counter", help);
        for (report, state) in &states {
            family.sample(&[("target", &report.name)], value(state));
        }
    }
    let mut family = Family::new(
        out,
        "mesbak_offsite_last_copy_duration_seconds",
        "gauge",
        "How long the last copy to the target took, upload and verification.",
    );
    for (report, state) in &states {
        if state.copies_total > 0 {
            family.sample(
                &[("target", &report.name)],
                state.last_copy_ms as f64 / 1000.0,
            );
        }
    }
    let mut family = Family::new(
        out,
        "mesbak_offsite_last_verify_duration_seconds",
        "gauge",
        "How long reading the last copy back from the target took.",
    );
    for (report, state) in &states {
        if state.copies_total > 0 {
            family.sample(
                &[("target", &report.name)],
                state.last_verify_ms as f64 / 1000.0,
            );
        }
    }
}
