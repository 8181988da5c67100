//! The psql sessions a load runs in: a main session that takes the SQL in
//! order and, from pg_dump's first table data on, worker sessions that
//! share what may run side by side ([`super::route`]). Before work of
//! another kind starts, every session that had work finishes it: each is
//! sent a query whose answer (a marker) psql prints once everything
//! before it has run. So nothing runs before what it needs, as in a
//! single session.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mesbak_interface::Error;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::route::{PIECE_BYTES, Routed, Unit};
use crate::postgres::Server;
use crate::process::{self, Outcome};

/// Bytes queued for one session: the next piece of a table waits there
/// while the session loads the one before.
const QUEUED_BYTES: usize = 2 * PIECE_BYTES;
/// Text shorter than this (statement lines, the ends of a piece) is
/// gathered into a copy of its own before it is queued: a slice of the
/// stream keeps the whole block it came from alive, and many small slices
/// queued by many sessions kept many blocks (the agent's RSS rose by a
/// third); one write per gathered batch, not per line, too.
const BATCH_BYTES: usize = 64 * 1024;

/// The kinds of work that may not overlap: each needs the one before it
/// finished.
#[derive(Clone, Copy, PartialEq, Debug)]
#[repr(usize)]
enum Phase {
    /// Statements in order, in the main session.
    Serial = 0,
    /// Tables' COPY data.
    Data,
    /// Indexes, primary keys and unique constraints.
    Build,
}

/// Why feeding stopped before the end.
pub enum Stopped {
    /// The job was cancelled.
    Cancelled,
    /// A session's psql ended (it stopped at an error) or stopped reading.
    Ended,
    /// Starting a worker session or reading the new database failed.
    Failed(Error),
}

struct Session {
    input: Option<mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>>,
    /// Small text gathered and not yet queued ([`BATCH_BYTES`]).
    batch: BytesMut,
    /// Room in the session's queue, in bytes.
    room: Arc<Semaphore>,
    writer: JoinHandle<()>,
    /// The last marker psql printed.
    marked: watch::Receiver<u64>,
    /// psql's `COPY <rows>` reports, in order; ends when psql does.
    reports: JoinHandle<Vec<u64>>,
    done: JoinHandle<Result<Outcome, Error>>,
    /// Tables of the COPY statements sent, in order.
    copies: Vec<String>,
    /// Has been sent work not yet known to be finished.
    busy: bool,
}

impl Session {
    async fn start(server: &Server, database: &str, marker: &str) -> Result<Session, Error> {
        let spawned = server
            .spawn(
                "psql",
                &["-X", "-v", "ON_ERROR_STOP=1", "-d", database],
                true,
            )
            .await?;
        let process::Spawned {
            mut stdout,
            stdin,
            done,
        } = spawned;
        let mut stdin = stdin.ok_or_else(|| Error::Failed("psql has no input".into()))?;
        let (input, mut queue) = mpsc::unbounded_channel::<(Bytes, OwnedSemaphorePermit)>();
        let writer = tokio::spawn(async move {
            let mut written = 0u64;
            // The permit goes back once the bytes are written.
            while let Some((block, _room)) = queue.recv().await {
                if let Err(err) = stdin.write_all(&block).await {
                    // psql ended, or its input broke: either way the load
                    // stops, and this says which.
                    tracing::warn!(error = %err, written, "writing to a psql session of a load failed");
                    break;
                }
                written += block.len() as u64;
            }
            let _ = stdin.shutdown().await;
        });
        let (mark, marked) = watch::channel(0u64);
        let marker = marker.to_owned();
        // psql prints `COPY <rows>` per COPY it ran and the markers' rows;
        // everything else is noise.
        let reports = tokio::spawn(async move {
            let mut counts = Vec::new();
            let mut line = Vec::new();
            while let Some(block) = stdout.recv().await {
                for &byte in block.iter() {
                    if byte != b'\n' {
                        if line.len() < 128 {
                            line.push(byte);
                        }
                        continue;
                    }
                    if let Some(rows) = line.strip_prefix(b"COPY ") {
                        counts.extend(
                            std::str::from_utf8(rows)
                                .ok()
                                .and_then(|r| r.parse::<u64>().ok()),
                        );
                    } else if let Some(number) = std::str::from_utf8(&line)
                        .ok()
                        .and_then(|l| l.trim().strip_prefix(marker.as_str()))
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        let _ = mark.send(number);
                    }
                    line.clear();
                }
            }
            counts
        });
        Ok(Session {
            input: Some(input),
            batch: BytesMut::new(),
            room: Arc::new(Semaphore::new(QUEUED_BYTES)),
            writer,
            marked,
            reports,
            done,
            copies: Vec::new(),
            busy: false,
        })
    }

    /// Queues `text` after what was sent before; small text waits in the
    /// batch until it fills, or until [`Session::flush`].
    async fn send(&mut self, text: Bytes, stop: &CancellationToken) -> Result<(), Stopped> {
        if text.len() < BATCH_BYTES {
            if self.batch.capacity() == 0 {
                self.batch.reserve(2 * BATCH_BYTES);
            }
            self.batch.extend_from_slice(&text);
            if self.batch.len() < BATCH_BYTES {
                return Ok(());
            }
            return self.flush(stop).await;
        }
        self.flush(stop).await?;
        self.queue(text, stop).await
    }

    /// Queues the batch gathered so far.
    async fn flush(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch).freeze();
        self.queue(batch, stop).await
    }

    async fn queue(&self, text: Bytes, stop: &CancellationToken) -> Result<(), Stopped> {
        let Some(input) = &self.input else {
            return Err(Stopped::Ended);
        };
        let want = text.len().min(QUEUED_BYTES) as u32;
        let room = tokio::select! {
            room = self.room.clone().acquire_many_owned(want) => room.map_err(|_| Stopped::Ended)?,
            _ = stop.cancelled() => return Err(Stopped::Cancelled),
        };
        input.send((text, room)).map_err(|_| Stopped::Ended)
    }

    fn kill(&mut self) {
        self.input = None;
        self.writer.abort();
        self.reports.abort();
        self.done.abort();
    }
}

/// What the sessions did.
pub struct Finished {
    /// Rows stored per table, as psql reported each COPY; None when the
    /// reports could not be matched to the COPY statements sent.
    pub copied_rows: Option<BTreeMap<String, u64>>,
    /// Sessions used, the main one included.
    pub sessions: usize,
    /// COPY statements (tables, or pieces of them) and indexes or keys,
    /// each of which may have gone beside others.
    pub copies: usize,
    pub builds: usize,
    /// Time spent in each phase, in order: statements, data, indexes and
    /// keys (with one session, the time feeding them).
    pub spent_ms: [u128; 3],
}

pub struct Sessions<'a> {
    server: &'a Server,
    database: &'a str,
    /// Worker sessions to start at the first table data (0: one session).
    workers: usize,
    /// The main session first, then the workers once started.
    sessions: Vec<Session>,
    /// Session settings so far, for workers started later.
    settings: Vec<Bytes>,
    phase: Phase,
    /// Tables whose rows must go in the dump's order (a foreign key or a
    /// trigger already holds them: an extension's catalog).
    in_order: BTreeSet<String>,
    /// The session the unit being sent goes to.
    current: usize,
    next_worker: usize,
    /// What markers start with: unique to this load.
    marker: String,
    marks: u64,
    builds: usize,
    phase_started: Instant,
    spent: [Duration; 3],
    /// The session whose psql was found ended (or not reading): the one
    /// that says why the load stopped.
    ended: Option<usize>,
}

impl<'a> Sessions<'a> {
    /// Starts the main session on `database`; `workers` more join it at the
    /// first table data.
    pub async fn start(
        server: &'a Server,
        database: &'a str,
        workers: usize,
    ) -> Result<Sessions<'a>, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let marker = format!("mesbak-load-{:x}-", nanos ^ u128::from(std::process::id()));
        let main = Session::start(server, database, &marker).await?;
        Ok(Sessions {
            server,
            database,
            workers,
            sessions: vec![main],
            settings: Vec::new(),
            phase: Phase::Serial,
            in_order: BTreeSet::new(),
            current: 0,
            next_worker: 0,
            marker,
            marks: 0,
            builds: 0,
            phase_started: Instant::now(),
            spent: [Duration::ZERO; 3],
            ended: None,
        })
    }

    /// Sends one routed piece of the SQL where it goes.
    pub async fn feed(&mut self, routed: Routed, stop: &CancellationToken) -> Result<(), Stopped> {
        // A session whose psql ended stopped at an error (ON_ERROR_STOP):
        // the rest of the SQL would be fed to no one.
        if let Some(index) = self.sessions.iter().position(|s| s.reports.is_finished()) {
            self.ended = Some(index);
            return Err(Stopped::Ended);
        }
        match routed {
            Routed::Main { text, statement } => {
                if statement {
                    self.enter(Phase::Serial, stop).await?;
                    self.sessions[0].busy = true;
                }
                self.send_to(0, text, stop).await
            }
            Routed::Setting(text) => {
                // Kept to the end: a copy, not the block it is a slice of.
                let text = Bytes::copy_from_slice(&text);
                self.settings.push(text.clone());
                for index in 0..self.sessions.len() {
                    self.send_to(index, text.clone(), stop).await?;
                }
                Ok(())
            }
            Routed::Start { unit, text } => {
                let phase = match unit {
                    Unit::Copy { .. } => Phase::Data,
                    Unit::Build => Phase::Build,
                };
                self.enter(phase, stop).await?;
                let target = match &unit {
                    Unit::Copy { table } if self.in_order.contains(table) => 0,
                    _ => self.pick(),
                };
                let session = &mut self.sessions[target];
                match unit {
                    Unit::Copy { table } => session.copies.push(table),
                    Unit::Build => self.builds += 1,
                }
                session.busy = true;
                self.current = target;
                self.send_to(target, text, stop).await
            }
            Routed::More(text) => self.send_to(self.current, text, stop).await,
        }
    }

    /// Sends `text` to one session; one that ended is noted as the one
    /// that says why.
    async fn send_to(
        &mut self,
        index: usize,
        text: Bytes,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let sent = self.sessions[index].send(text, stop).await;
        self.note_ended(index, sent)
    }

    /// Queues what waits in one session's batch (before waiting for it).
    async fn flush(&mut self, index: usize, stop: &CancellationToken) -> Result<(), Stopped> {
        let flushed = self.sessions[index].flush(stop).await;
        self.note_ended(index, flushed)
    }

    fn note_ended(&mut self, index: usize, sent: Result<(), Stopped>) -> Result<(), Stopped> {
        if matches!(sent, Err(Stopped::Ended)) {
            self.ended.get_or_insert(index);
        }
        sent
    }

    /// The worker with the most room in its queue (the main session when
    /// there are none); ties go round.
    fn pick(&mut self) -> usize {
        let count = self.sessions.len() - 1;
        if count == 0 {
            return 0;
        }
        let mut best = None;
        for offset in 0..count {
            let index = 1 + (self.next_worker + offset) % count;
            let room = self.sessions[index].room.available_permits();
            if best.is_none_or(|(_, most)| room > most) {
                best = Some((index, room));
            }
        }
        let (index, _) = best.expect("at least one worker");
        self.next_worker = index % count;
        index
    }

    /// Moves to `phase`: every session that had work finishes it first.
    async fn enter(&mut self, phase: Phase, stop: &CancellationToken) -> Result<(), Stopped> {
        if phase == self.phase {
            return Ok(());
        }
        if self.workers > 0 {
            self.wait_for_all(stop).await?;
        }
        self.spent[self.phase as usize] += self.phase_started.elapsed();
        self.phase_started = Instant::now();
        self.phase = phase;
        if self.workers == 0 {
            return Ok(());
        }
        if phase != Phase::Serial && self.sessions.len() == 1 {
            self.start_workers().await.map_err(Stopped::Failed)?;
        }
        Ok(())
    }

    /// Starts the workers, with the settings so far, and reads which
    /// tables must be filled in order. Workers connect now, after the
    /// main session's statements so far (TimescaleDB's restoring mode is
    /// a database setting a session takes when it connects).
    async fn start_workers(&mut self) -> Result<(), Error> {
        let started = futures_util::future::try_join_all(
            (0..self.workers).map(|_| Session::start(self.server, self.database, &self.marker)),
        );
        let in_order = self.server.query_value::<Vec<String>>(
            self.database,
            "SELECT coalesce(pg_catalog.json_agg(DISTINCT n.nspname || '.' || c.relname), '[]'::json) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid IN (SELECT conrelid FROM pg_catalog.pg_constraint WHERE contype = 'f' \
             UNION SELECT confrelid FROM pg_catalog.pg_constraint WHERE contype = 'f' \
             UNION SELECT tgrelid FROM pg_catalog.pg_trigger)",
        );
        let (started, in_order) = tokio::join!(started, in_order);
        self.in_order = in_order?.into_iter().collect();
        self.sessions.extend(started?);
        let never = CancellationToken::new();
        for session in &mut self.sessions[1..] {
            for setting in &self.settings {
                if session.send(setting.clone(), &never).await.is_err() {
                    return Err(Error::Database(
                        "a psql session for the load ended as it started".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits until every session that had work has run all of it.
    async fn wait_for_all(&mut self, stop: &CancellationToken) -> Result<(), Stopped> {
        self.marks += 1;
        let number = self.marks;
        let query = Bytes::from(format!(
            "SELECT '{}{number}' AS mesbak_load;\n",
            self.marker
        ));
        let busy: Vec<usize> = (0..self.sessions.len())
            .filter(|&index| self.sessions[index].busy)
            .collect();
        for &index in &busy {
            self.send_to(index, query.clone(), stop).await?;
            self.flush(index, stop).await?;
        }
        for index in busy {
            let mut marked = self.sessions[index].marked.clone();
            tokio::select! {
                seen = marked.wait_for(|&seen| seen >= number) => {
                    if seen.is_err() {
                        self.ended.get_or_insert(index);
                        return Err(Stopped::Ended);
                    }
                }
                _ = stop.cancelled() => return Err(Stopped::Cancelled),
            }
            self.sessions[index].busy = false;
        }
        Ok(())
    }

    /// Stops every session at once (a cancelled job).
    pub fn kill(mut self) {
        for session in &mut self.sessions {
            session.kill();
        }
    }

    /// Ends the input of every session and waits for them; after `failed`
    /// (feeding stopped early) the sessions still running are stopped but
    /// the one found ended, which says why (None: none did). `fail` makes psql's
    /// words an error.
    pub async fn finish(
        mut self,
        failed: bool,
        fail: impl Fn(String) -> Error,
    ) -> Result<Option<Finished>, Error> {
        let mut first_error = None;
        let mut all_matched = true;
        let mut copied: BTreeMap<String, u64> = BTreeMap::new();
        let ended = self.ended;
        for (index, session) in self.sessions.iter_mut().enumerate() {
            if failed && ended != Some(index) && !session.reports.is_finished() {
                session.kill();
                continue;
            }
            if !failed {
                // A psql that ended says why below.
                let _ = session.flush(&CancellationToken::new()).await;
            }
            session.input = None;
            let _ = (&mut session.writer).await;
            let counts = (&mut session.reports).await.unwrap_or_default();
            let outcome = process::join(&mut session.done).await;
            if let Err(err) = outcome.and_then(|outcome| outcome.check(&fail)) {
                first_error.get_or_insert(err);
            }
            all_matched &= counts.len() == session.copies.len();
            for (table, rows) in session.copies.iter().zip(counts) {
                *copied.entry(table.clone()).or_default() += rows;
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        self.spent[self.phase as usize] += self.phase_started.elapsed();
        Ok((!failed).then(|| Finished {
            copied_rows: all_matched.then_some(copied),
            sessions: self.sessions.len(),
            copies: self.sessions.iter().map(|s| s.copies.len()).sum(),
            builds: self.builds,
            spent_ms: self.spent.map(|d| d.as_millis()),
        }))
    }
}
