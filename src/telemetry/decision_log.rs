//! The decision log: one JSON line per decision, to a file or stdout. Lines are queued to a
//! dedicated writer thread through a bounded channel, so a slow disk never blocks a request;
//! when the queue is full the line is dropped and counted (`deputy_decision_log_dropped`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;

use super::Metrics;

/// How many lines may wait for the writer before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 10_000;
/// What a masked value is replaced with.
pub const MASK: &str = "***";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecisionLogTarget {
    Stdout,
    File(PathBuf),
}

impl DecisionLogTarget {
    /// `-` is stdout; anything else a file, appended to.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecisionLogConfig {
    pub target: DecisionLogTarget,
    /// Context fields whose values are written as `***`; `a.b` names field `b` inside `a`.
    pub mask: Vec<String>,
    /// Log denies (and errors) only.
    pub drop_allows: bool,
    pub queue: usize,
}

impl DecisionLogConfig {
    pub fn new(target: DecisionLogTarget) -> Self {
        Self {
            target,
            mask: Vec::new(),
            drop_allows: false,
            queue: DEFAULT_QUEUE,
        }
    }
}

type Writer = Box<dyn Write + Send>;

pub struct DecisionLog {
    tx: Option<SyncSender<String>>,
    writer: Option<JoinHandle<()>>,
    mask: Vec<Vec<String>>,
    drop_allows: bool,
    dropped: Counter,
    queued: Gauge,
}

impl DecisionLog {
    /// Opens the target (a file is created if missing and appended to) and starts the writer.
    pub fn open(config: &DecisionLogConfig, metrics: &Metrics) -> std::io::Result<Self> {
        let out: Writer = match &config.target {
            DecisionLogTarget::Stdout => Box::new(std::io::stdout()),
            DecisionLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("decision log `{}`: {e}", path.display())))?,
            ),
        };
        Self::start(out, config, metrics)
    }

    fn start(out: Writer, config: &DecisionLogConfig, metrics: &Metrics) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(config.queue.max(1));
        let errors = metrics.log_errors.clone();
        let queued = metrics.log_queued.clone();
        let writer = std::thread::Builder::new()
            .name("decision-log".to_owned())
            .spawn(move || write_lines(&rx, out, &errors, &queued))?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            mask: config
                .mask
                .iter()
                .map(|m| m.split('.').map(str::to_owned).collect())
                .collect(),
            drop_allows: config.drop_allows,
            dropped: metrics.log_dropped.clone(),
            queued: metrics.log_queued.clone(),
        })
    }

    pub fn drops_allows(&self) -> bool {
        self.drop_allows
    }

    /// A copy of `context` with the masked fields' values replaced.
    pub fn masked(&self, context: Option<&Value>) -> Option<Value> {
        let mut context = context.cloned()?;
        for path in &self.mask {
            mask_path(&mut context, path);
        }
        Some(context)
    }

    /// Queues one line; never blocks.
    pub fn send(&self, line: String) {
        let Some(tx) = &self.tx else { return };
        // Counted before it is sent, so the gauge never reads 0 while this line is unwritten.
        self.queued.inc();
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.dec();
                self.dropped.inc();
            }
        }
    }
}

impl Drop for DecisionLog {
    /// Lets the writer drain what is queued, then waits for it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn mask_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for key in parents {
        match at.get_mut(key.as_str()) {
            Some(v) => at = v,
            None => return,
        }
    }
    if let Some(v) = at.as_object_mut().and_then(|o| o.get_mut(last.as_str())) {
        *v = Value::String(MASK.to_owned());
    }
}

/// Writes lines as they come, flushing whenever the queue runs empty; a line leaves the
/// `queued` gauge once it is flushed (or failed).
fn write_lines(rx: &Receiver<String>, mut out: Writer, errors: &Counter, queued: &Gauge) {
    let mut failing = false;
    let mut write = |out: &mut Writer, line: &str| {
        let result = out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\n"));
        if let Err(e) = result {
            errors.inc();
            if !failing {
                tracing::error!(error = %e, "cannot write the decision log; lines are being lost");
            }
            failing = true;
        } else {
            failing = false;
        }
    };
    while let Ok(line) = rx.recv() {
        write(&mut out, &line);
        let mut batch = 1;
        while let Ok(line) = rx.try_recv() {
            write(&mut out, &line);
            batch += 1;
        }
        if let Err(e) = out.flush() {
            errors.inc();
            tracing::error!(error = %e, "cannot flush the decision log");
        }
        queued.dec_by(batch);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_top_level_and_nested_fields() {
        let mut v = json!({"ssn": "123", "user": {"email": "a@b", "name": "A"}, "n": 1});
        mask_path(&mut v, &["ssn".to_owned()]);
        mask_path(&mut v, &["user".to_owned(), "email".to_owned()]);
        mask_path(&mut v, &["absent".to_owned(), "x".to_owned()]);
        assert_eq!(v, json!({"ssn": "***", "user": {"email": "***", "name": "A"}, "n": 1}));
    }

    /// A writer that blocks until released, as a stuck disk would.
    struct Stuck(std::sync::mpsc::Receiver<()>, std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let metrics = Metrics::new(None);
        let (release, stuck) = std::sync::mpsc::channel();
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let config = DecisionLogConfig {
            queue: 2,
            ..DecisionLogConfig::new(DecisionLogTarget::Stdout)
        };
        let log = DecisionLog::start(Box::new(Stuck(stuck, written.clone())), &config, &metrics).unwrap();
        // The writer takes the first line and blocks on it; two more fill the queue.
        for i in 0..10 {
            log.send(format!("{i}"));
        }
        let dropped = log.dropped.get();
        assert!((7..=8).contains(&dropped), "{dropped}");
        drop(release);
        drop(log);
        assert!(metrics
            .render()
            .contains(&format!("deputy_decision_log_dropped_total {dropped}")));
        let lines = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(lines.lines().count() as u64, 10 - dropped);
    }

    #[test]
    fn writes_every_line_before_closing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let metrics = Metrics::new(None);
        let log = DecisionLog::open(&DecisionLogConfig::new(DecisionLogTarget::File(path.clone())), &metrics).unwrap();
        for i in 0..100 {
            log.send(format!("{{\"n\":{i}}}"));
        }
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
    }
}
