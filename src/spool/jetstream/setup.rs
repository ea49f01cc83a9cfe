//! Connecting to the server and making what the spool needs there: the log, dead-letter and
//! refused streams, the members and pauses buckets, one consumer per destination and
//! partition. Everything is created if missing and left as is when it matches, so any
//! number of daemons can start at once.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use super::names::{Names, OWNER_GROUP};
use crate::config::SpoolConfig;

/// The oldest server with what the spool relies on (priority groups, pinned clients).
const MIN_VERSION: (u64, u64) = (2, 11);

/// How long the server waits for an acknowledgement before giving a message to someone
/// else; the owner tells it "in progress" well within that for everything it holds.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(6);

/// A pinned daemon that stops pulling for this long loses its partition to another.
pub(super) const PIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Most messages one consumer hands out unacknowledged: what a daemon holds of a partition.
pub(super) const MAX_ACK_PENDING: i64 = 2000;

/// The dedupe window when the config does not set one: the server keeps every id of the
/// window in memory, so a day (the embedded spool's default) would cost too much.
pub(super) const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(600);

/// Bytes a stored message needs beyond its body: its headers (ids, destinations, group).
pub(super) const HEADER_ROOM: usize = 4096;

/// Metadata key on the log stream recording its partition count.
const PARTITIONS_KEY: &str = "switchyard.partitions";

/// Why the spool could not start, naming the server.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot reach the JetStream server at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "the NATS server at {url} is version {version}; switchyard needs {}.{} or later (README, Running several daemons)",
        MIN_VERSION.0, MIN_VERSION.1
    )]
    TooOld { url: String, version: String },
    #[error("the NATS server at {url} does not have JetStream enabled (start it with -js)")]
    NoJetStream { url: String },
    #[error(
        "stream {stream} was made with {found} partitions and the config says {configured}: partitions cannot change while messages wait (per-group order depends on them)"
    )]
    Partitions {
        stream: String,
        found: String,
        configured: u32,
    },
    #[error(
        "server.max_message_bytes ({max_message_bytes}) does not fit the NATS server's max_payload ({max_payload} bytes, with room for headers) at {url}: lower it, or raise max_payload in the server's config"
    )]
    Payload {
        url: String,
        max_message_bytes: usize,
        max_payload: usize,
    },
    #[error("JetStream {what}: {reason}")]
    Server { what: String, reason: String },
}

pub(super) fn server(what: impl Into<String>, e: impl std::fmt::Display) -> SetupError {
    SetupError::Server {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// The URL list as configured, for messages: a user and password written into a URL
/// (`nats://user:pass@host`) show as `***`.
pub(super) fn url_of(c: &SpoolConfig) -> String {
    let url = c.url.as_deref().unwrap_or_default();
    url.split(',')
        .map(super::names::shown_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// Connect with the configured credentials and TLS; fails at once (naming the URL) when no
/// server answers, and when the server is too old or has no JetStream.
pub(super) async fn connect(c: &SpoolConfig, name: &str) -> Result<async_nats::Client, SetupError> {
    let url = url_of(c);
    let fail = |reason: String| SetupError::Connect {
        url: url.clone(),
        reason,
    };
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| fail(e.to_string()))?;
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .require_tls(c.tls || c.tls_ca.is_some());
    if let Some(ca) = &c.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(user), Some(password)) = (&c.user, &c.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(token) = &c.token {
        options = options.token(token.expose().to_string());
    }
    if let Some(creds) = &c.creds {
        options = options.credentials_file(creds).await.map_err(|e| {
            fail(format!(
                "cannot read the creds file {}: {e}",
                creds.display()
            ))
        })?;
    }
    let client = options
        .connect(addrs)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let version = client.server_info().version;
    if !new_enough(&version) {
        return Err(SetupError::TooOld { url, version });
    }
    if !client.server_info().jetstream {
        return Err(SetupError::NoJetStream { url });
    }
    Ok(client)
}

fn new_enough(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= MIN_VERSION
}

/// [`streams`], tried again for a while when the server is up but its JetStream is not ready
/// yet (a cluster still electing its leader answers "temporarily unavailable" or not at all).
pub(super) async fn streams_when_ready(
    js: &jetstream::Context,
    names: &Names,
    c: &SpoolConfig,
) -> Result<(stream::Stream, stream::Stream, stream::Stream), SetupError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match streams(js, names, c).await {
            Err(SetupError::Server { what, reason }) if std::time::Instant::now() < deadline => {
                tracing::info!(what = %what, reason = %reason, "JetStream not ready; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// The streams and buckets, made or updated to the config.
pub(super) async fn streams(
    js: &jetstream::Context,
    names: &Names,
    c: &SpoolConfig,
) -> Result<(stream::Stream, stream::Stream, stream::Stream), SetupError> {
    let replicas = c.replicas();
    let window = dedupe_window(c);
    let partitions = c.partitions();
    let log_name = names.log_stream();
    if let Ok(mut existing) = js.get_stream(&log_name).await {
        let info = existing
            .info()
            .await
            .map_err(|e| server(format!("stream {log_name}"), e))?;
        let found = info.config.metadata.get(PARTITIONS_KEY).cloned();
        if let Some(found) = found
            && found != partitions.to_string()
        {
            return Err(SetupError::Partitions {
                stream: log_name,
                found,
                configured: partitions,
            });
        }
    }
    let log = stream::Config {
        name: log_name.clone(),
        subjects: names.log_subjects(),
        // Kept while some destination's consumer has not acknowledged it.
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        max_bytes: c.max_bytes as i64,
        discard: stream::DiscardPolicy::New,
        duplicate_window: window,
        num_replicas: replicas,
        metadata: HashMap::from([(PARTITIONS_KEY.to_string(), partitions.to_string())]),
        ..Default::default()
    };
    // Dead letters and refused messages: kept until a person purges or replays them.
    let kept = |name: String, subject: String, max_bytes: u64| stream::Config {
        name,
        subjects: vec![subject],
        storage: stream::StorageType::File,
        max_bytes: max_bytes as i64,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    };
    let dead = kept(names.dead_stream(), names.dead_subjects(), c.max_bytes);
    let refused = kept(
        names.refused_stream(),
        names.refused_subject(),
        c.max_refused_bytes,
    );
    let mut made = Vec::new();
    for config in [log, dead, refused] {
        let name = config.name.clone();
        js.create_or_update_stream(config)
            .await
            .map_err(|e| server(format!("cannot make stream {name}"), e))?;
        made.push(
            js.get_stream(&name)
                .await
                .map_err(|e| server(format!("stream {name}"), e))?,
        );
    }
    let refused = made.pop().expect("three");
    let dead = made.pop().expect("three");
    let log = made.pop().expect("three");
    Ok((log, dead, refused))
}

/// The partition count the log stream was made with, if it says.
pub(super) async fn partitions_of(log: &mut stream::Stream) -> Option<u32> {
    let info = log.info().await.ok()?;
    info.config.metadata.get(PARTITIONS_KEY)?.parse().ok()
}

pub(super) fn dedupe_window(c: &SpoolConfig) -> Duration {
    if c.place.keys.iter().any(|(k, _)| k == "dedupe_window") {
        c.dedupe_window
    } else {
        DEFAULT_DEDUPE_WINDOW
    }
}

/// A key-value bucket, made if missing.
pub(super) async fn bucket(
    js: &jetstream::Context,
    name: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, SetupError> {
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.clone(),
        history: 1,
        max_age,
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| server(format!("cannot make bucket {name}"), e))
}

/// One destination's consumer of one partition: its log subject and its replays, pulled by
/// one daemon at a time (the pinned client of the `owner` group).
pub(super) async fn consumer(
    log: &stream::Stream,
    names: &Names,
    destination: &str,
    partition: u32,
) -> Result<(), SetupError> {
    let name = names.consumer(destination, partition);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name.clone()),
        filter_subjects: vec![
            names.log_subject(partition),
            names.replay_subject(partition, destination),
        ],
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        deliver_policy: consumer::DeliverPolicy::All,
        priority_policy: consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![OWNER_GROUP.to_string()],
        priority_timeout: PIN_TIMEOUT,
        ..Default::default()
    };
    log.get_or_create_consumer(&name, config)
        .await
        .map(|_: consumer::Consumer<consumer::pull::Config>| ())
        .map_err(|e| server(format!("cannot make consumer {name}"), e))
}

/// Delete the consumers of destinations no longer configured (and of partitions beyond the
/// count), so the stream keeps nothing for a destination nobody reads.
pub(super) async fn remove_unread(
    log: &stream::Stream,
    names: &Names,
    destinations: &[String],
    partitions: u32,
) -> Result<Vec<String>, SetupError> {
    use futures_util::StreamExt;
    let wanted: Vec<String> = destinations
        .iter()
        .map(|d| super::names::token(d))
        .collect();
    let mut listed = log.consumer_names();
    let mut removed = Vec::new();
    while let Some(name) = listed.next().await {
        let name = name.map_err(|e| server("cannot list consumers", e))?;
        let Some((token, partition)) = names.parse_consumer(&name) else {
            continue;
        };
        if wanted.iter().any(|w| w == token) && partition < partitions {
            continue;
        }
        log.delete_consumer(&name)
            .await
            .map_err(|e| server(format!("cannot delete consumer {name}"), e))?;
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_urls_are_not_shown() {
        let c = crate::config::SpoolConfig {
            url: Some("nats://ops:hunter2@10.0.0.1:4222, tls://10.0.0.2:4222".into()),
            ..Default::default()
        };
        assert_eq!(
            super::url_of(&c),
            "nats://***@10.0.0.1:4222,tls://10.0.0.2:4222"
        );
    }

    #[test]
    fn versions_from_2_11_are_new_enough() {
        for (v, ok) in [
            ("2.9.10", false),
            ("2.10.22", false),
            ("2.11.0", true),
            ("2.15.1", true),
            ("3.0.0-beta", true),
        ] {
            assert_eq!(super::new_enough(v), ok, "{v}");
        }
    }
}
