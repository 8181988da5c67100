//! Retention: which backups stay and why, by restic's rules (`forget
//! --keep-last / --keep-daily / --keep-weekly / --keep-monthly`) beside the
//! age limit `days` (the seed stack's BACKUP_RETENTION_DAYS). It runs after
//! a successful backup, for the kinds just saved, and on an explicit prune.
//!
//! [`plan`] is a pure function of the backups (id, series, date, and why
//! one is not good), the policy, the time and the kind of run, so local and
//! off-site retention share it and tests inject times. Per series (a backup
//! kind), newest first:
//! - a *good* backup (see [`crate::trust`]) stays when it is the newest
//!   good one, among the newest `keep_last`, the newest of one of the last
//!   `keep_daily` days / `keep_weekly` ISO weeks / `keep_monthly` months
//!   that have a good backup (restic's buckets, in UTC), or made within
//!   `days` of now;
//! - a backup that is not good counts toward none of those rules and cannot
//!   push a good one out: it stays while within `days`, then goes;
//! - a backup whose date is unknown or in the future stays and is flagged:
//!   its age cannot be judged, and it never counts as the newest;
//! - an automatic run that would delete more than half of a series at once
//!   deletes nothing of it and says why: that is what a clock that jumped
//!   ahead looks like. An explicit `mesbakctl prune`, after its `--dry-run`
//!   showed each file and why, is the operator's decision and goes ahead.

use mesbak_interface::{BackupKind, Error, PruneDecision};
use time::{Duration, OffsetDateTime};

use crate::app::App;
use crate::config::{Config, Retention};
use crate::jobs::{Job, now_rfc3339};
use crate::state::{AgentState, FailureRecord};
use crate::storage::Listed;
use crate::trust::{self, format_time, human_span, is_future, parse_time};

/// The rules, as configured in `[retention]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub days: u32,
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
}

impl From<&Retention> for Policy {
    fn from(retention: &Retention) -> Policy {
        Policy {
            days: retention.days,
            keep_last: retention.keep_last,
            keep_daily: retention.keep_daily,
            keep_weekly: retention.keep_weekly,
            keep_monthly: retention.keep_monthly,
        }
    }
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    /// Backups are weighed against those of the same series (a kind).
    pub series: String,
    /// `None` when the date is unknown.
    pub created: Option<OffsetDateTime>,
    /// Why it is not a good backup; `None` when it is.
    pub flaw: Option<String>,
}

/// What happens to one backup, and every reason for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub id: String,
    pub series: String,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// A retention run's decisions, in the order of the candidates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// `(series, why)` for each series an automatic run held back.
    pub held_back: Vec<(String, String)>,
}

impl Plan {
    pub fn deletions(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep)
    }
}

/// Who asked: the run after a backup holds back a mass deletion; an
/// explicit prune does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Automatic,
    Explicit,
}

/// Decides, for every candidate, whether it stays and why.
pub fn plan(candidates: &[Candidate], policy: &Policy, now: OffsetDateTime, run: Run) -> Plan {
    let mut decisions: Vec<Decision> = candidates
        .iter()
        .map(|c| Decision {
            id: c.id.clone(),
            series: c.series.clone(),
            keep: true,
            reasons: Vec::new(),
        })
        .collect();
    let mut series: Vec<&str> = Vec::new();
    for candidate in candidates {
        if !series.contains(&candidate.series.as_str()) {
            series.push(&candidate.series);
        }
    }
    let mut held_back = Vec::new();
    for name in series {
        let members: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].series == name)
            .collect();
        decide_series(candidates, &members, policy, now, &mut decisions);
        if run == Run::Automatic {
            if let Some(why) = hold_back(candidates, &members, now, &mut decisions) {
                held_back.push((name.to_owned(), why));
            }
        }
    }
    Plan {
        decisions,
        held_back,
    }
}

/// A bucket rule: restic keeps the newest backup of each of the last
/// `count` periods that have one.
struct Bucket {
    key: &'static str,
    count: u32,
    period: fn(OffsetDateTime) -> String,
}

fn day(time: OffsetDateTime) -> String {
    format!("day {}", time.date())
}

fn week(time: OffsetDateTime) -> String {
    let (year, week, _) = time.to_iso_week_date();
    format!("week {year}-W{week:02}")
}

fn month(time: OffsetDateTime) -> String {
    format!("month {}-{:02}", time.year(), u8::from(time.month()))
}

fn decide_series(
    candidates: &[Candidate],
    members: &[usize],
    policy: &Policy,
    now: OffsetDateTime,
    decisions: &mut [Decision],
) {
    let cutoff = now - Duration::days(policy.days.into());
    let mut good: Vec<(usize, OffsetDateTime)> = Vec::new();
    for &i in members {
        let candidate = &candidates[i];
        match candidate.created {
            None => decisions[i]
                .reasons
                .push("its date is unknown, so its age cannot be judged".into()),
            Some(created) if is_future(created, now) => decisions[i].reasons.push(format!(
                "dated {}, {} ahead of the clock: its age cannot be judged until the clock passes it",
                format_time(created),
                human_span(created - now)
            )),
            Some(created) if candidate.flaw.is_none() => good.push((i, created)),
            Some(_) => {}
        }
    }
    good.sort_by(|(a, at), (b, bt)| {
        bt.cmp(at)
            .then_with(|| candidates[*b].id.cmp(&candidates[*a].id))
    });

    for (nr, &(i, _)) in good.iter().enumerate() {
        if nr == 0 {
            decisions[i].reasons.push("the newest good backup".into());
        } else if nr < policy.keep_last as usize {
            decisions[i].reasons.push(format!(
                "one of the newest {} good backups (keep_last)",
                policy.keep_last
            ));
        }
    }
    for bucket in [
        Bucket {
            key: "keep_daily",
            count: policy.keep_daily,
            period: day,
        },
        Bucket {
            key: "keep_weekly",
            count: policy.keep_weekly,
            period: week,
        },
        Bucket {
            key: "keep_monthly",
            count: policy.keep_monthly,
            period: month,
        },
    ] {
        let mut left = bucket.count;
        let mut last: Option<String> = None;
        for &(i, created) in &good {
            if left == 0 {
                break;
            }
            let period = (bucket.period)(created);
            if last.as_ref() != Some(&period) {
                decisions[i].reasons.push(format!(
                    "the newest good backup of {period} ({} = {})",
                    bucket.key, bucket.count
                ));
                last = Some(period);
                left -= 1;
            }
        }
    }

    for &i in members {
        let candidate = &candidates[i];
        let Some(created) = candidate.created.filter(|t| !is_future(*t, now)) else {
            continue;
        };
        let decision = &mut decisions[i];
        if created >= cutoff {
            decision.reasons.push(format!(
                "made within the last {}",
                count(policy.days, "day")
            ));
        }
        match (&candidate.flaw, decision.reasons.is_empty()) {
            (Some(flaw), true) => {
                decision.keep = false;
                decision.reasons.push(format!(
                    "older than {} and not a good backup ({flaw})",
                    count(policy.days, "day")
                ));
            }
            (Some(flaw), false) => decision.reasons.push(format!(
                "not a good backup, so no keep_* rule counts it ({flaw})"
            )),
            (None, true) => {
                decision.keep = false;
                decision
                    .reasons
                    .push(expired_good(policy, created, now, &decision.series));
            }
            (None, false) => {}
        }
    }
}

fn expired_good(
    policy: &Policy,
    created: OffsetDateTime,
    now: OffsetDateTime,
    series: &str,
) -> String {
    let mut text = format!(
        "{} old: older than {} and not among the newest {} good {series} backups",
        human_span(now - created),
        count(policy.days, "day"),
        policy.keep_last.max(1)
    );
    for (key, n, period) in [
        ("keep_daily", policy.keep_daily, "day"),
        ("keep_weekly", policy.keep_weekly, "week"),
        ("keep_monthly", policy.keep_monthly, "month"),
    ] {
        if n > 0 {
            text.push_str(&format!(
                ", nor the newest of one of the last {} ({key} = {n})",
                count(n, period)
            ));
        }
    }
    text
}

/// `1 day`, `30 days`.
fn count(n: u32, unit: &str) -> String {
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// Holds back an automatic run that would delete most of a series.
fn hold_back(
    candidates: &[Candidate],
    members: &[usize],
    now: OffsetDateTime,
    decisions: &mut [Decision],
) -> Option<String> {
    let deleting: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| !decisions[i].keep)
        .collect();
    if deleting.is_empty() || deleting.len() * 2 <= members.len() {
        return None;
    }
    let series = &candidates[members[0]].series;
    let newest_deleted = deleting
        .iter()
        .filter_map(|&i| candidates[i].created)
        .max()
        .unwrap_or(now);
    let why = format!(
        "automatic retention held back: it would delete {} of the {} {series} backups at once, the newest of them dated {} ({} before the clock's now, {}). That is what a clock that jumped ahead looks like: check the clock (`timedatectl`). If the clock is right and fewer backups are wanted on purpose, run `mesbakctl prune` after checking `mesbakctl prune --dry-run`",
        deleting.len(),
        members.len(),
        format_time(newest_deleted),
        human_span(now - newest_deleted),
        format_time(now),
    );
    for i in deleting {
        let decision = &mut decisions[i];
        decision.keep = true;
        let reasons = std::mem::take(&mut decision.reasons).join("; ");
        decision.reasons.push(format!(
            "held back: this run would delete most {series} backups at once (it would go: {reasons})"
        ));
    }
    Some(why)
}

/// What a local retention run did.
#[derive(Debug, Default)]
pub struct Applied {
    pub deleted: Vec<String>,
    /// One sentence per backup that could not be deleted.
    pub failed: Vec<String>,
    /// `(kind, why)` per kind an automatic run held back.
    pub held_back: Vec<(String, String)>,
}

/// Plans retention for `kinds` of the local backups now, deletes what the
/// plan lets go and remembers (for health) which kinds were held back.
pub fn apply(app: &App, job: &Job, kinds: &[BackupKind], run: Run) -> Result<Applied, Error> {
    let listed = app.storage.list_checked()?;
    let plan = local_plan(
        &listed,
        &app.config,
        &app.state.get(),
        kinds,
        OffsetDateTime::now_utc(),
        run,
    );
    let mut applied = Applied::default();
    let total = plan.deletions().count();
    for decision in plan.deletions() {
        job.check_cancel(&match applied.deleted.len() {
            0 => "nothing was deleted".to_owned(),
            n => format!("{n} of {total} backups were deleted before that"),
        })?;
        let Some(found) = listed.iter().find(|l| l.info.id == decision.id) else {
            continue;
        };
        match app.storage.delete(&found.info) {
            Ok(()) => {
                tracing::info!(job = job.id, file = %decision.id, reasons = %decision.reasons.join("; "), "retention deleted a backup");
                applied.deleted.push(decision.id.clone());
            }
            Err(err) => applied.failed.push(format!(
                "{} could not be deleted: {}",
                decision.id,
                err.message()
            )),
        }
    }
    for (series, why) in &plan.held_back {
        tracing::warn!(job = job.id, kind = %series, "{why}");
    }
    app.state.update(|state| {
        for kind in kinds {
            match plan
                .held_back
                .iter()
                .find(|(series, _)| series == kind.as_str())
            {
                Some((_, why)) => {
                    state.retention_held.insert(
                        kind.as_str().to_owned(),
                        FailureRecord {
                            time: now_rfc3339(),
                            message: why.clone(),
                        },
                    );
                }
                None => {
                    state.retention_held.remove(kind.as_str());
                }
            }
        }
    })?;
    applied.held_back = plan.held_back;
    Ok(applied)
}

/// The local backups as candidates, each series a backup kind.
pub fn local_candidates(listed: &[Listed], config: &Config, state: &AgentState) -> Vec<Candidate> {
    listed
        .iter()
        .map(|l| Candidate {
            id: l.info.id.clone(),
            series: l.info.kind.as_str().to_owned(),
            created: parse_time(&l.info.created),
            flaw: trust::flaw(l, config, state),
        })
        .collect()
}

/// A plan's decisions as they cross the bus, with each backup's details.
pub fn wire_decisions(plan: &Plan, listed: &[Listed]) -> Vec<PruneDecision> {
    plan.decisions
        .iter()
        .filter_map(|decision| {
            let info = &listed.iter().find(|l| l.info.id == decision.id)?.info;
            Some(PruneDecision {
                id: decision.id.clone(),
                kind: info.kind,
                created: info.created.clone(),
                size_bytes: info.size_bytes,
                keep: decision.keep,
                reasons: decision.reasons.clone(),
            })
        })
        .collect()
}

/// The local plan for `kinds` at `now`.
pub fn local_plan(
    listed: &[Listed],
    config: &Config,
    state: &AgentState,
    kinds: &[BackupKind],
    now: OffsetDateTime,
    run: Run,
) -> Plan {
    let mine: Vec<Listed> = listed
        .iter()
        .filter(|l| kinds.contains(&l.info.kind))
        .cloned()
        .collect();
    plan(
        &local_candidates(&mine, config, state),
        &Policy::from(&config.retention),
        now,
        run,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        parse_time(text).unwrap()
    }

    fn good(id: &str, created: &str) -> Candidate {
        Candidate {
            id: id.into(),
            series: "database".into(),
            created: Some(at(created)),
            flaw: None,
        }
    }

    fn flawed(id: &str, created: &str, flaw: &str) -> Candidate {
        Candidate {
            flaw: Some(flaw.into()),
            ..good(id, created)
        }
    }

    fn policy(days: u32, keep_last: u32) -> Policy {
        Policy {
            days,
            keep_last,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
        }
    }

    fn kept(plan: &Plan) -> Vec<&str> {
        plan.decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.as_str())
            .collect()
    }

    fn deleted(plan: &Plan) -> Vec<&str> {
        plan.deletions().map(|d| d.id.as_str()).collect()
    }

    fn reasons(plan: &Plan, id: &str) -> String {
        plan.decisions
            .iter()
            .find(|d| d.id == id)
            .unwrap()
            .reasons
            .join(" | ")
    }

    /// One good backup a day at midnight, from `first` for `days` days,
    /// named by their date.
    fn daily(first: &str, days: i64) -> Vec<Candidate> {
        let start = at(first);
        (0..days)
            .map(|n| {
                let time = start + Duration::days(n);
                Candidate {
                    id: time.date().to_string(),
                    series: "database".into(),
                    created: Some(time),
                    flaw: None,
                }
            })
            .collect()
    }

    #[test]
    fn age_alone_deletes_old_backups_but_never_the_newest_good_one() {
        let now = at("2026-11-24T12:00:00Z");
        let backups = vec![
            good("d-new", "2026-11-23T00:00:00Z"),
            good("d-old", "2026-09-01T00:00:00Z"),
            flawed(
                "d-broken-new",
                "2026-11-20T00:00:00Z",
                "it lacks the schema(s) mes_audit",
            ),
            flawed("d-broken-old", "2026-09-02T00:00:00Z", "it has no metadata"),
            Candidate {
                series: "ignition".into(),
                ..flawed("i-broken", "2026-10-02T00:00:00Z", "it has no metadata")
            },
            Candidate {
                series: "ignition".into(),
                ..good("i-only-good", "2026-10-01T00:00:00Z")
            },
            Candidate {
                series: "ignition".into(),
                ..good("i-older", "2026-09-01T00:00:00Z")
            },
        ];
        let plan = plan(&backups, &policy(30, 1), now, Run::Explicit);
        assert_eq!(
            deleted(&plan),
            vec!["d-old", "d-broken-old", "i-broken", "i-older"]
        );
        assert!(reasons(&plan, "d-new").contains("the newest good backup"));
        assert!(reasons(&plan, "i-only-good").contains("the newest good backup"));
        assert!(
            reasons(&plan, "d-broken-new").contains("not a good backup")
                && reasons(&plan, "d-broken-new").contains("within the last 30 days"),
            "{}",
            reasons(&plan, "d-broken-new")
        );
        assert!(
            reasons(&plan, "d-broken-old").contains("it has no metadata"),
            "{}",
            reasons(&plan, "d-broken-old")
        );
        assert!(
            reasons(&plan, "d-old").contains("older than 30 days"),
            "{}",
            reasons(&plan, "d-old")
        );
    }

    #[test]
    fn keep_last_keeps_the_newest_good_ones_and_bad_ones_do_not_count() {
        let now = at("2026-11-24T12:00:00Z");
        let mut backups = daily("2026-01-01T00:00:00Z", 10);
        // Thirty days of incomplete backups after the last complete one.
        for n in 0..35 {
            let time = at("2026-10-20T00:00:00Z") + Duration::days(n);
            backups.push(Candidate {
                id: format!("bad-{n}"),
                series: "database".into(),
                created: Some(time),
                flaw: Some("it lacks the schema(s) mes_core".into()),
            });
        }
        let plan = plan(&backups, &policy(30, 3), now, Run::Explicit);
        let kept_good: Vec<&str> = kept(&plan)
            .into_iter()
            .filter(|id| !id.starts_with("bad-"))
            .collect();
        assert_eq!(kept_good, vec!["2026-01-08", "2026-01-09", "2026-01-10"]);
        assert!(reasons(&plan, "2026-01-09").contains("newest 3 good backups (keep_last)"));
        // Incomplete ones within the 30 days stay, older ones go.
        assert!(!deleted(&plan).contains(&"bad-34"));
        assert!(deleted(&plan).contains(&"bad-0"));
    }

    #[test]
    fn daily_weekly_and_monthly_buckets_follow_restic() {
        // Two backups a day for 120 days.
        let start = at("2026-01-01T00:00:00Z");
        let mut backups = Vec::new();
        for n in 0..240 {
            let time = start + Duration::hours(12 * n);
            backups.push(Candidate {
                id: format!("{}T{:02}", time.date(), time.hour()),
                series: "database".into(),
                created: Some(time),
                flaw: None,
            });
        }
        let now = at("2026-05-01T00:00:00Z");
        let rules = Policy {
            days: 1,
            keep_last: 2,
            keep_daily: 7,
            keep_weekly: 4,
            keep_monthly: 3,
        };
        let plan = plan(&backups, &rules, now, Run::Explicit);
        let mut expected = vec![
            // keep_last 2 (also within 1 day)
            "2026-04-30T12",
            "2026-04-30T00",
            // keep_daily 7: the newest of each of the last 7 days
            "2026-04-29T12",
            "2026-04-28T12",
            "2026-04-27T12",
            "2026-04-26T12",
            "2026-04-25T12",
            "2026-04-24T12",
            // keep_weekly 4: newest of ISO weeks 18 (Apr 27-), 17, 16, 15
            "2026-04-19T12",
            "2026-04-12T12",
            // keep_monthly 3: newest of April, March, February
            "2026-03-31T12",
            "2026-02-28T12",
        ];
        expected.sort();
        let mut got = kept(&plan);
        got.sort();
        assert_eq!(got, expected);
        let why = reasons(&plan, "2026-04-30T12");
        for part in [
            "the newest good backup",
            "day 2026-04-30 (keep_daily = 7)",
            "week 2026-W18 (keep_weekly = 4)",
            "month 2026-04 (keep_monthly = 3)",
        ] {
            assert!(why.contains(part), "{why}");
        }
        assert!(reasons(&plan, "2026-04-19T12").contains("week 2026-W16"));
        let gone = reasons(&plan, "2026-04-01T00");
        assert!(
            gone.contains("older than 1 day and not among the newest 2")
                && gone.contains("last 7 days (keep_daily = 7)")
                && gone.contains("last 3 months (keep_monthly = 3)"),
            "{gone}"
        );
    }

    #[test]
    fn a_clock_that_jumped_ahead_cannot_empty_the_folder() {
        // Two good backups, then one made 400 days later by a clock ahead.
        let mut backups = vec![
            good("mes_a", "2026-11-22T00:00:00Z"),
            good("mes_b", "2026-11-23T00:00:00Z"),
        ];
        let ahead = at("2027-12-28T00:00:00Z");
        backups.push(Candidate {
            created: Some(ahead),
            ..good("mes_ahead", "2027-12-28T00:00:00Z")
        });
        let now = ahead + Duration::minutes(2);

        // keep_last (default 7) alone already keeps them.
        let plan_default = plan(&backups, &policy(30, 7), now, Run::Automatic);
        assert_eq!(deleted(&plan_default), Vec::<&str>::new());
        assert!(plan_default.held_back.is_empty());

        // Without keep_last, the second guard: most of the series at once.
        let held = plan(&backups, &policy(30, 1), now, Run::Automatic);
        assert_eq!(deleted(&held), Vec::<&str>::new());
        assert_eq!(held.held_back.len(), 1);
        let (series, why) = &held.held_back[0];
        assert_eq!(series, "database");
        assert!(
            why.contains("2 of the 3 database backups") && why.contains("timedatectl"),
            "{why}"
        );
        assert!(
            reasons(&held, "mes_a").starts_with("held back"),
            "{}",
            reasons(&held, "mes_a")
        );
        // An explicit prune is the operator's decision.
        let explicit = plan(&backups, &policy(30, 1), now, Run::Explicit);
        assert_eq!(deleted(&explicit), vec!["mes_a", "mes_b"]);
        assert!(explicit.held_back.is_empty());
    }

    #[test]
    fn normal_runs_and_shortened_retention_are_not_held_back() {
        let backups = daily("2026-10-01T00:00:00Z", 40);
        let now = at("2026-11-09T12:00:00Z");
        let normal = plan(&backups, &policy(30, 7), now, Run::Automatic);
        assert!(normal.held_back.is_empty());
        assert_eq!(deleted(&normal).len(), 10);
        // Shortened to 7 days: 33 of 40 would go at once: held back.
        let shortened = plan(&backups, &policy(7, 7), now, Run::Automatic);
        assert_eq!(shortened.held_back.len(), 1);
        assert_eq!(deleted(&shortened).len(), 0);
        assert_eq!(
            deleted(&plan(&backups, &policy(7, 7), now, Run::Explicit)).len(),
            33
        );
    }

    #[test]
    fn future_and_undated_backups_stay_and_never_count_as_newest() {
        // Back on the right clock after a jump: a backup dated 2028 exists.
        let now = at("2026-11-24T12:00:00Z");
        let backups = vec![
            good("mes_future", "2028-01-01T00:00:00Z"),
            good("mes_today", "2026-11-24T00:00:00Z"),
            good("mes_old", "2026-01-01T00:00:00Z"),
            Candidate {
                created: None,
                ..good("mes_undated", "2026-01-01T00:00:00Z")
            },
        ];
        let plan = plan(&backups, &policy(30, 1), now, Run::Explicit);
        assert_eq!(deleted(&plan), vec!["mes_old"]);
        assert!(reasons(&plan, "mes_today").contains("the newest good backup"));
        assert!(
            !reasons(&plan, "mes_future").contains("newest"),
            "{}",
            reasons(&plan, "mes_future")
        );
        assert!(
            reasons(&plan, "mes_future").contains("ahead of the clock"),
            "{}",
            reasons(&plan, "mes_future")
        );
        assert!(reasons(&plan, "mes_undated").contains("date is unknown"));
        // A future one alone never lets the real ones go.
        let only = vec![
            good("mes_future", "2028-01-01T00:00:00Z"),
            good("mes_old", "2026-01-01T00:00:00Z"),
        ];
        let plan_only = super::plan(&only, &policy(30, 1), now, Run::Explicit);
        assert_eq!(deleted(&plan_only), Vec::<&str>::new());
    }
}
