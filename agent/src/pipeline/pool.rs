//! A fixed set of worker threads taking jobs from one bounded queue, each
//! with state of its own (a libdeflate compressor or decompressor).

use std::io;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub struct Pool<J: Send + 'static> {
    jobs: Option<SyncSender<J>>,
    workers: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> Pool<J> {
    /// Starts `threads` workers named `name-N`, each running `work` on its
    /// own `state()` for every job; at most `threads` jobs wait.
    pub fn start<S: 'static>(
        name: &str,
        threads: usize,
        state: impl Fn() -> S + Send + Sync + 'static,
        work: fn(&mut S, J),
    ) -> io::Result<Pool<J>> {
        let threads = threads.max(1);
        let (jobs, queue) = sync_channel::<J>(threads);
        let queue = Arc::new(Mutex::new(queue));
        let state = Arc::new(state);
        let workers = (0..threads)
            .map(|n| {
                let queue = queue.clone();
                let state = state.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{n}"))
                    .spawn(move || run(&queue, &mut state(), work))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Pool {
            jobs: Some(jobs),
            workers,
        })
    }

    /// Queues a job, waiting while the queue is full; false once stopped.
    pub fn send(&self, job: J) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// Closes the queue and waits for the workers to finish what they hold.
    pub fn stop(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl<J: Send + 'static> Drop for Pool<J> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<S, J>(queue: &Mutex<Receiver<J>>, state: &mut S, work: fn(&mut S, J)) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return;
        };
        work(state, job);
    }
}
