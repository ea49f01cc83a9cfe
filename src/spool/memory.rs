//! The in-memory spool: the contract without durability. Messages live in this process only,
//! so a crash or restart loses the backlog; rejected messages are still appended to
//! `rejected.jsonl` in the spool directory.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{Appended, Attempt, Depth, Leased, Rejected, Seq, Spool, SpoolError};
use crate::message::Accepted;

pub struct MemorySpool {
    state: Mutex<State>,
    /// One per destination: woken on append and on retries being scheduled.
    wakers: HashMap<String, Arc<Notify>>,
    dir: PathBuf,
    max_bytes: u64,
    dedupe_window: Duration,
}

struct Entry {
    body: Arc<str>,
    group: Option<Arc<str>>,
    /// Destinations that have not settled this message yet.
    remaining: u32,
}

#[derive(Default)]
struct Lane {
    /// New items in arrival order.
    queue: VecDeque<Seq>,
    /// Items waiting for a retry, by due time.
    retries: BTreeSet<(SystemTime, Seq)>,
    /// Attempt history of items that failed at least once.
    attempts: HashMap<Seq, (u32, SystemTime)>,
    in_flight: HashSet<Seq>,
    /// Groups with an item in retry or in flight, with how many: newer items of them wait.
    held: HashMap<Arc<str>, u32>,
    dead: u64,
}

#[derive(Default)]
struct State {
    next_seq: Seq,
    log: HashMap<Seq, Entry>,
    bytes: u64,
    lanes: HashMap<String, Lane>,
    seen: HashMap<(String, String), Instant>,
    seen_order: VecDeque<(Instant, String, String)>,
}

impl MemorySpool {
    pub fn new(
        dir: PathBuf,
        destinations: &[String],
        max_bytes: u64,
        dedupe_window: Duration,
    ) -> Self {
        let mut state = State::default();
        let mut wakers = HashMap::new();
        for d in destinations {
            state.lanes.insert(d.clone(), Lane::default());
            wakers.insert(d.clone(), Arc::new(Notify::new()));
        }
        Self {
            state: Mutex::new(state),
            wakers,
            dir,
            max_bytes,
            dedupe_window,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent enough
        // to keep serving; poisoning would only turn one bug into an outage.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, destination: &str) {
        if let Some(n) = self.wakers.get(destination) {
            n.notify_one();
        }
    }
}

impl State {
    fn forget_expired(&mut self, window: Duration) {
        let now = Instant::now();
        while let Some((at, _, _)) = self.seen_order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if let Some((at, source, id)) = self.seen_order.pop_front()
                && self.seen.get(&(source.clone(), id.clone())) == Some(&at)
            {
                self.seen.remove(&(source, id));
            }
        }
    }

    /// One destination is done with `seq`: release its group and, when no destination is
    /// left, the message itself.
    fn settle(&mut self, destination: &str, seq: Seq) {
        let group = self.log.get(&seq).and_then(|e| e.group.clone());
        if let Some(lane) = self.lanes.get_mut(destination) {
            lane.in_flight.remove(&seq);
            lane.attempts.remove(&seq);
            if let Some(g) = group {
                release(&mut lane.held, &g);
            }
        }
        if let Some(entry) = self.log.get_mut(&seq) {
            entry.remaining = entry.remaining.saturating_sub(1);
            if entry.remaining == 0 {
                let bytes = entry.body.len() as u64;
                self.log.remove(&seq);
                self.bytes = self.bytes.saturating_sub(bytes);
            }
        }
    }
}

fn release(held: &mut HashMap<Arc<str>, u32>, group: &Arc<str>) {
    if let Some(n) = held.get_mut(group) {
        *n -= 1;
        if *n == 0 {
            held.remove(group);
        }
    }
}

#[async_trait]
impl Spool for MemorySpool {
    async fn append(&self, messages: Vec<Accepted>) -> Result<Vec<Appended>, SpoolError> {
        let mut touched = HashSet::new();
        let answers = {
            let mut st = self.lock();
            st.forget_expired(self.dedupe_window);
            let incoming: u64 = messages.iter().map(|m| m.body.len() as u64).sum();
            if st.bytes + incoming > self.max_bytes {
                return Err(SpoolError::Full {
                    used: st.bytes,
                    max: self.max_bytes,
                });
            }
            let mut answers = Vec::with_capacity(messages.len());
            for m in messages {
                let key = (m.source.clone(), m.message_id.clone());
                if st.seen.contains_key(&key) {
                    answers.push(Appended::Duplicate);
                    continue;
                }
                let now = Instant::now();
                st.seen.insert(key, now);
                st.seen_order.push_back((now, m.source, m.message_id));
                answers.push(Appended::Stored);
                let targets: Vec<String> = m
                    .destinations
                    .into_iter()
                    .filter(|d| st.lanes.contains_key(d))
                    .collect();
                if targets.is_empty() {
                    continue;
                }
                let seq = st.next_seq;
                st.next_seq += 1;
                st.bytes += m.body.len() as u64;
                st.log.insert(
                    seq,
                    Entry {
                        body: Arc::from(m.body),
                        group: m.group_id.map(Arc::from),
                        remaining: targets.len() as u32,
                    },
                );
                for d in targets {
                    if let Some(lane) = st.lanes.get_mut(&d) {
                        lane.queue.push_back(seq);
                    }
                    touched.insert(d);
                }
            }
            answers
        };
        for d in touched {
            self.wake(&d);
        }
        Ok(answers)
    }

    async fn reject(&self, rejected: Vec<Rejected>) -> Result<(), SpoolError> {
        let lines: String = rejected
            .iter()
            .map(|r| {
                let at = chrono::DateTime::<chrono::Utc>::from(r.at).to_rfc3339();
                let line = serde_json::json!({
                    "at": at, "source": r.source, "index": r.index, "error": r.error, "message": r.raw,
                });
                format!("{line}\n")
            })
            .collect();
        let path = self.dir.join("rejected.jsonl");
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(lines.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|e| SpoolError::Storage(e.to_string()))?
        .map_err(|e| SpoolError::Storage(format!("writing rejected.jsonl: {e}")))
    }

    async fn lease(&self, destination: &str, max: usize) -> Result<Vec<Leased>, SpoolError> {
        let mut st = self.lock();
        let State { log, lanes, .. } = &mut *st;
        let Some(lane) = lanes.get_mut(destination) else {
            return Ok(Vec::new());
        };
        let now = SystemTime::now();
        let mut out = Vec::new();
        // Due retries first: they are the oldest items of their groups.
        while out.len() < max {
            let Some(&(at, seq)) = lane.retries.iter().next() else {
                break;
            };
            if at > now {
                break;
            }
            lane.retries.remove(&(at, seq));
            lane.in_flight.insert(seq);
            let (attempts, first) = lane.attempts.get(&seq).copied().unwrap_or((0, now));
            if let Some(e) = log.get(&seq) {
                out.push(Leased {
                    seq,
                    body: e.body.clone(),
                    group_id: e.group.clone(),
                    attempts,
                    first_attempt: Some(first),
                });
            }
        }
        let mut i = 0;
        while out.len() < max && i < lane.queue.len() {
            let seq = lane.queue[i];
            let Some(e) = log.get(&seq) else {
                lane.queue.remove(i);
                continue;
            };
            if let Some(g) = &e.group
                && lane.held.contains_key(g)
            {
                i += 1;
                continue;
            }
            lane.queue.remove(i);
            lane.in_flight.insert(seq);
            out.push(Leased {
                seq,
                body: e.body.clone(),
                group_id: e.group.clone(),
                attempts: 0,
                first_attempt: None,
            });
        }
        // Hold each leased item's group only after the scan, so items of one group leased
        // together stay together (in order) instead of blocking one another.
        for l in &out {
            if let Some(g) = &l.group_id {
                *lane.held.entry(g.clone()).or_default() += 1;
            }
        }
        Ok(out)
    }

    async fn ack(&self, destination: &str, seqs: &[Seq]) -> Result<(), SpoolError> {
        let mut st = self.lock();
        for &seq in seqs {
            st.settle(destination, seq);
        }
        drop(st);
        self.wake(destination);
        Ok(())
    }

    async fn retry_at(
        &self,
        destination: &str,
        seq: Seq,
        at: SystemTime,
        attempt: &Attempt,
    ) -> Result<(), SpoolError> {
        let mut st = self.lock();
        if let Some(lane) = st.lanes.get_mut(destination)
            && lane.in_flight.remove(&seq)
        {
            lane.retries.insert((at, seq));
            lane.attempts
                .insert(seq, (attempt.attempts, attempt.first_attempt));
        }
        drop(st);
        self.wake(destination);
        Ok(())
    }

    async fn dead_letter(
        &self,
        destination: &str,
        seq: Seq,
        attempt: &Attempt,
    ) -> Result<(), SpoolError> {
        let mut st = self.lock();
        tracing::debug!(destination, seq, reason = %attempt.reason, "dead letter kept in memory only");
        if let Some(lane) = st.lanes.get_mut(destination) {
            lane.dead += 1;
        }
        st.settle(destination, seq);
        drop(st);
        self.wake(destination);
        Ok(())
    }

    async fn wait(&self, destination: &str, max: Duration) {
        let Some(notify) = self.wakers.get(destination).cloned() else {
            tokio::time::sleep(max).await;
            return;
        };
        let next_retry = {
            let st = self.lock();
            st.lanes
                .get(destination)
                .and_then(|l| l.retries.iter().next().map(|(at, _)| *at))
        };
        let until_retry = next_retry
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(max);
        let _ = tokio::time::timeout(max.min(until_retry), notify.notified()).await;
    }

    fn depth(&self, destination: &str) -> Depth {
        let st = self.lock();
        st.lanes
            .get(destination)
            .map(|l| Depth {
                pending: (l.queue.len() + l.retries.len()) as u64,
                in_flight: l.in_flight.len() as u64,
                retrying: l.retries.len() as u64,
                dead_letters: l.dead,
            })
            .unwrap_or_default()
    }
}
