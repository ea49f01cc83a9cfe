//! The daemons sharing a spool: each puts its record in the members bucket every
//! [`HEARTBEAT`]; a record not refreshed for [`MEMBER_TTL`] expires, and its daemon is gone.
//! Partitions go to the delivering members by rendezvous hashing (each partition to the
//! member whose hash with it is highest), so a member joining or leaving moves only its own
//! share. Also here: pulling the owned partitions, "in progress" for what is held, the
//! cluster-wide counts, and the shared pauses.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use super::names::{self, OWNER_GROUP};
use super::setup::{ACK_WAIT, MAX_ACK_PENDING};
use super::{Inner, Lane, Role, lock, read};

/// Longest a partition taken over waits for the messages still outstanding on its consumer
/// (held by the daemon that had it, or lost on the way) before its items go anyway: a
/// backstop, for an acknowledgement the server lost.
pub(super) const RECOVERY_MAX: Duration = Duration::from_secs(30);

/// How often a daemon refreshes its record and looks at the others'.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(2);

/// A daemon whose record is this old is gone: its partitions go to the others. Longer than
/// a cluster's leader election (about 5 s), during which no record can be refreshed.
pub(super) const MEMBER_TTL: Duration = Duration::from_secs(10);

/// A daemon that could not refresh its record for this long lets go of its partitions (the
/// others may already count it gone), before its record can expire: two daemons never
/// deliver one partition at once.
pub(super) const SELF_FENCE: Duration = Duration::from_secs(6);

/// One daemon, as the others see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub role: Role,
    /// RFC 3339.
    pub started: String,
    /// Partitions it pulls (the same for every destination).
    #[serde(default)]
    pub owns: Vec<u32>,
    /// Items it holds waiting for a retry, per destination.
    #[serde(default)]
    pub retrying: std::collections::BTreeMap<String, u64>,
    /// Items it has leased (being delivered), per destination.
    #[serde(default)]
    pub leased: std::collections::BTreeMap<String, u64>,
    /// The destinations its config has: their consumers stay while it lives.
    #[serde(default)]
    pub serves: Vec<String>,
}

impl Member {
    pub(super) fn new(role: Role) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Self {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            host,
            pid: std::process::id(),
            role,
            started: chrono::Utc::now().to_rfc3339(),
            owns: Vec::new(),
            retrying: Default::default(),
            leased: Default::default(),
            serves: Vec::new(),
        }
    }
}

/// Which of `ids` owns each of `partitions`: every daemon computes the same answer from the
/// same members. Each partition goes to the member ranking it highest (rendezvous hashing)
/// among those not yet at their fair share (`partitions / members`, rounded up), so the work
/// is spread evenly and a change of members moves few partitions.
fn owners(partitions: u32, ids: &[&str]) -> Vec<usize> {
    use sha2::{Digest, Sha256};
    if ids.is_empty() {
        return Vec::new();
    }
    // Every member takes `floor` partitions, and `extra` of them one more.
    let (floor, extra) = (
        partitions as usize / ids.len(),
        partitions as usize % ids.len(),
    );
    let mut owned = vec![0; ids.len()];
    let mut above = 0;
    (0..partitions)
        .map(|p| {
            let mut ranked: Vec<(u64, usize)> = (0..ids.len())
                .map(|i| {
                    let mut h = Sha256::new();
                    h.update(ids[i].as_bytes());
                    h.update(p.to_be_bytes());
                    let d = h.finalize();
                    (u64::from_be_bytes(d[..8].try_into().expect("8 bytes")), i)
                })
                .collect();
            ranked.sort_unstable_by(|a, b| b.cmp(a));
            let (_, i) = *ranked
                .iter()
                .find(|(_, i)| owned[*i] < floor || (owned[*i] == floor && above < extra))
                .expect("the shares add up to the partitions");
            if owned[i] == floor {
                above += 1;
            }
            owned[i] += 1;
            i
        })
        .collect()
}

/// Put this daemon's record, read everyone's, and take or release partitions to match.
pub(super) async fn beat(inner: &Arc<Inner>) {
    if inner.leaving.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let mut me = inner.me.clone();
    me.serves = read(&inner.destinations).clone();
    if let Some(lane) = read(&inner.lanes).values().next() {
        me.owns = lane.owned();
    }
    for (name, lane) in read(&inner.lanes).iter() {
        let (retrying, leased) = lane.counts();
        me.retrying.insert(name.clone(), retrying);
        me.leased.insert(name.clone(), leased);
    }
    let record = serde_json::to_vec(&me).unwrap_or_default();
    // Timed from before the put: the server's copy is no older than this.
    let putting = Instant::now();
    if let Err(e) = inner.members.put(&me.id, record.into()).await {
        let since = lock(&inner.last_beat).elapsed();
        tracing::warn!(error = %e, since = ?since, "cannot refresh this daemon's record in the members bucket");
        if since >= SELF_FENCE {
            let owned = read(&inner.lanes).values().any(|l| !l.owned().is_empty());
            if owned {
                tracing::warn!(
                    "letting go of every partition until the members bucket answers again"
                );
                release_all(inner).await;
            }
        }
        return;
    }
    *lock(&inner.last_beat) = putting;
    match alive(inner).await {
        Ok(members) => *lock(&inner.alive) = members,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the members bucket");
            return;
        }
    }
    rebalance(inner).await;
}

async fn alive(inner: &Inner) -> Result<Vec<Member>, String> {
    let mut keys = inner.members.keys().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        if let Ok(Some(value)) = inner.members.get(&key).await
            && let Ok(m) = serde_json::from_slice::<Member>(&value)
        {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Take the partitions this daemon should own and release the others, for every lane.
pub(super) async fn rebalance(inner: &Arc<Inner>) {
    if !inner.me.role.delivers() || inner.leaving.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let mine: BTreeSet<u32> = {
        let alive = lock(&inner.alive);
        let mut ids: Vec<&str> = alive
            .iter()
            .filter(|m| m.role.delivers())
            .map(|m| m.id.as_str())
            .collect();
        if !ids.contains(&inner.me.id.as_str()) {
            ids.push(&inner.me.id);
        }
        ids.sort_unstable();
        let owners = owners(inner.partitions, &ids);
        (0..inner.partitions)
            .filter(|p| ids[owners[*p as usize]] == inner.me.id)
            .collect()
    };
    let lanes: Vec<Arc<Lane>> = read(&inner.lanes).values().cloned().collect();
    for lane in lanes {
        let owned: BTreeSet<u32> = lane.owned().into_iter().collect();
        for &p in owned.difference(&mine) {
            hand_over(inner, &lane, p).await;
            tracing::info!(destination = %lane.name, partition = p, "partition handed over to another daemon");
        }
        // A lane removed meanwhile (a reload) gets no puller: nothing would ever stop it.
        if !read(&inner.lanes).values().any(|l| Arc::ptr_eq(l, &lane)) {
            continue;
        }
        for &p in mine.difference(&owned) {
            let puller = tokio::spawn(pull(inner.clone(), lane.clone(), p));
            lane.own(p, puller, Instant::now() + RECOVERY_MAX);
        }
    }
}

/// Let another daemon pull `partition` now rather than after the pin timeout.
async fn unpin(inner: &Inner, destination: &str, partition: u32) {
    let subject = format!(
        "CONSUMER.UNPIN.{}.{}",
        inner.names.log_stream(),
        inner.names.consumer(destination, partition)
    );
    let body = serde_json::json!({ "group": OWNER_GROUP });
    let asked = inner.js.request::<_, _, serde_json::Value>(subject, &body);
    match tokio::time::timeout(Duration::from_secs(2), asked).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(destination, partition, error = %e, "unpin refused"),
        Err(_) => tracing::debug!(destination, partition, "unpin not answered"),
    }
}

/// Heartbeat until the spool is dropped.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    loop {
        tick.tick().await;
        beat(&inner).await;
    }
}

/// Remove this daemon's record and let go of its partitions.
pub(super) async fn leave(inner: &Arc<Inner>) {
    inner
        .leaving
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(2), inner.members.delete(&inner.me.id)).await;
    release_all(inner).await;
}

/// Let go of every partition of every lane.
async fn release_all(inner: &Arc<Inner>) {
    let lanes: Vec<Arc<Lane>> = read(&inner.lanes).values().cloned().collect();
    for lane in lanes {
        for p in lane.owned() {
            hand_over(inner, &lane, p).await;
        }
    }
}

/// Stop pulling `partition` of `lane` and give what waits here back to the server at once,
/// for the next owner; items being delivered settle here (one that fails is given back
/// then). The next owner sends nothing of the partition until all of them are back.
async fn hand_over(inner: &Inner, lane: &Lane, partition: u32) {
    for acker in lane.release(partition) {
        super::hand_back(&acker).await;
    }
    unpin(inner, &lane.name, partition).await;
}

/// Whether this daemon's record may have expired: it leases nothing then.
pub(super) fn fenced(inner: &Inner) -> bool {
    lock(&inner.last_beat).elapsed() >= SELF_FENCE
}

/// Pull one partition of one destination into its lane while it is owned here.
async fn pull(inner: Arc<Inner>, lane: Arc<Lane>, partition: u32) {
    loop {
        if let Err(e) = pull_once(&inner, &lane, partition, &lane.token).await {
            tracing::debug!(destination = %lane.name, partition, error = %e, "pulling again in a second");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn pull_once(inner: &Inner, lane: &Lane, partition: u32, token: &str) -> Result<(), String> {
    let name = inner.names.consumer(&lane.name, partition);
    let mut consumer: PullConsumer = match inner.log.get_consumer(&name).await {
        Ok(c) => c,
        Err(e) => {
            // Deleted under it (a daemon whose file lacks the destination, at a moment no
            // live daemon served it): made again, from the messages still in the stream.
            tracing::warn!(destination = %lane.name, partition, error = %e, "consumer missing; making it again");
            super::setup::consumer(&inner.log, &inner.names, &lane.name, partition)
                .await
                .map_err(|e| e.to_string())?;
            inner
                .log
                .get_consumer(&name)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let mut messages = consumer
        .stream()
        .group(OWNER_GROUP)
        .max_messages_per_batch(MAX_ACK_PENDING as usize / 4)
        // Pulls renewed well within the pin timeout, so the pin stays while this daemon lives.
        .expires(Duration::from_secs(2))
        .heartbeat(Duration::from_secs(1))
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    // Nothing of the partition goes out until all the consumer has outstanding is here
    // (a first pull, or one after a broken one).
    lane.recover(partition, Instant::now() + RECOVERY_MAX);
    let mut last_delivery: Option<u64> = None;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            next = messages.next() => match next {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(message)) => {
                    // What has already come with it too, before anyone is woken: a group's
                    // calls that arrived together are leased (and coalesced) together.
                    let mut burst = vec![message];
                    while burst.len() < MAX_ACK_PENDING as usize {
                        match messages.next().now_or_never() {
                            Some(Some(Ok(m))) => burst.push(m),
                            _ => break,
                        }
                    }
                    for message in burst {
                        let (delivery, item) = match super::item_of(inner, message, partition, token).await {
                            Ok(read) => read,
                            Err(e) => {
                                tracing::error!(destination = %lane.name, partition, error = %e, "a stored message cannot be read; skipped");
                                continue;
                            }
                        };
                        if last_delivery.is_some_and(|last| delivery > last + 1) {
                            // A delivery lost on the way (a connection broken under the pull):
                            // it comes back after its ack wait, older than what follows it.
                            tracing::debug!(destination = %lane.name, partition, "a delivery was lost on the way; waiting for it");
                            lane.recover(partition, Instant::now() + RECOVERY_MAX);
                        }
                        last_delivery = Some(last_delivery.map_or(delivery, |l| l.max(delivery)));
                        if let Some(item) = item
                            && let Some(seen) = lane.arrive(item)
                        {
                            tracing::debug!(destination = %lane.name, seq = seen.seq,
                                "given again after it was settled: acknowledged, not sent again");
                            let _ = seen.acker.ack().await;
                        }
                    }
                    lane.notify.notify_one();
                }
            },
            _ = check.tick(), if lane.recovering(partition) => {
                let info = consumer.info().await.map_err(|e| e.to_string())?;
                if lane.check_recovery(partition, info.num_ack_pending) {
                    tracing::debug!(destination = %lane.name, partition, "partition taken over");
                }
            }
        }
    }
}

/// Tell the server "in progress" for everything held, well within its ack wait.
pub(super) async fn refresh(inner: Arc<Inner>) {
    let every = ACK_WAIT / 4;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let lanes: Vec<Arc<Lane>> = read(&inner.lanes).values().cloned().collect();
        for lane in lanes {
            for acker in lane.to_refresh(Instant::now() - ACK_WAIT / 3) {
                let _ = acker.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// Cluster-wide counts per destination, every heartbeat (for metrics scraped without a
/// refresh, and the reload's "still owed").
pub(super) async fn count(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        count_now(&inner).await;
    }
}

/// Each destination's counts from its consumers (waiting and unacknowledged), the members'
/// records (retrying) and the dead-letter stream.
pub(super) async fn count_now(inner: &Inner) {
    let destinations = read(&inner.destinations).clone();
    let dead = dead_counts(inner).await;
    let others: Vec<Member> = lock(&inner.alive)
        .iter()
        .filter(|m| m.id != inner.me.id)
        .cloned()
        .collect();
    for d in destinations {
        let mut counts = Counts::default();
        // One request per consumer, all at once (`get_consumer` answers with its info).
        let infos = (0..inner.partitions).map(|p| {
            let name = inner.names.consumer(&d, p);
            async move {
                let c = inner
                    .log
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                    .await
                    .ok()?;
                let info = c.cached_info();
                Some(info.num_pending + info.num_ack_pending as u64)
            }
        });
        for unsettled in futures_util::future::join_all(infos)
            .await
            .into_iter()
            .flatten()
        {
            counts.unsettled += unsettled;
        }
        for m in &others {
            counts.others_retrying += m.retrying.get(&d).copied().unwrap_or(0);
            counts.others_leased += m.leased.get(&d).copied().unwrap_or(0);
        }
        counts.dead_letters = dead.get(&names::token(&d)).copied().unwrap_or(0);
        lock(&inner.depth).insert(d, counts);
    }
}

/// What the last count saw of one destination across the cluster.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    /// Not acknowledged: waiting on the server, or held by a daemon.
    pub unsettled: u64,
    /// Held by the other daemons waiting for a retry, and leased by them (their records).
    pub others_retrying: u64,
    pub others_leased: u64,
    pub dead_letters: u64,
}

async fn dead_counts(inner: &Inner) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(mut subjects) = inner
        .dead
        .info_with_subjects(inner.names.dead_subjects())
        .await
    else {
        return out;
    };
    while let Some(Ok((subject, n))) = subjects.next().await {
        if let Some(token) = subject.rsplit('.').next() {
            out.insert(token.to_string(), n as u64);
        }
    }
    out
}

/// Follow the pauses bucket: a pause any daemon sets holds here too.
pub(super) async fn watch_pauses(inner: Arc<Inner>) {
    loop {
        match inner.pauses.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(Ok(entry)) = entries.next().await {
                    let ms = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    let mut paused = lock(&inner.paused);
                    match ms {
                        Some(ms) => {
                            let until = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                            let held = paused.entry(entry.key.clone()).or_insert(until);
                            *held = (*held).max(until);
                        }
                        None => {
                            paused.remove(&entry.key);
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot watch the pauses bucket"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::owners;

    #[test]
    fn partitions_spread_evenly_and_few_move_when_a_member_goes() {
        let three = ["a", "b", "c"];
        let before = owners(16, &three);
        for i in 0..3 {
            let n = before.iter().filter(|o| **o == i).count();
            assert!((5..=6).contains(&n), "member {i} owns {n} of 16");
        }
        assert_eq!(
            before,
            owners(16, &three),
            "the same members, the same answer"
        );
        let two = ["a", "b"];
        let after = owners(16, &two);
        let moved = (0..16)
            .filter(|&p| three[before[p]] != "c" && three[before[p]] != two[after[p]])
            .count();
        assert!(
            moved <= 3,
            "{moved} partitions of a and b moved when c left"
        );
        assert!(owners(4, &three).iter().all(|o| *o < 3));
    }
}
