//! What a crash left at the end of the write-ahead log, read before SQLite opens the file.
//!
//! SQLite replays the WAL's frames up to the last valid commit frame and silently ignores
//! the rest: a frame cut short by a crash mid-write, a frame whose checksum does not match,
//! or the frames of a transaction that never reached its commit frame. That is the right
//! recovery (every commit before the damage is kept, and nothing after it was acknowledged:
//! ingest answers only after the commit's fsync), but an operator should hear of it, so the
//! daemon reads the same format first (sqlite.org/fileformat2.html, "WAL File Format") and
//! says what is dropped and why.
//!
//! Format: a 32-byte header (magic, version, page size, checkpoint sequence, two salts, two
//! checksum words; big-endian), then frames of a 24-byte header (page number, database size
//! after commit or 0, the two salts, two cumulative checksum words) and one page. A frame
//! belongs to the current log when its salts equal the header's; the checksum runs over
//! the header's first 24 bytes, then each frame's first 8 header bytes and its page, in the
//! byte order the magic names. Frames with other salts are leftovers of an earlier log that
//! a checkpoint restarted over: they are not damage.

use std::path::Path;

const HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;

/// The end of the WAL that SQLite will drop.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    /// Bytes after the last committed transaction that belong to the current log.
    pub bytes: u64,
    /// Why they are dropped, in words.
    pub why: String,
}

/// The WAL file SQLite keeps beside the database file `db`.
pub fn file_of(db: &Path) -> std::path::PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    wal.into()
}

/// Read the WAL at `path` (none: nothing to say) and say what SQLite will drop, if anything.
pub fn tail(path: &Path) -> std::io::Result<Option<Dropped>> {
    let log = match std::fs::read(path) {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(inspect(&log))
}

fn be(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
fn checksum(data: &[u8], little_endian: bool, mut s: (u32, u32)) -> (u32, u32) {
    let word = |c: &[u8]| {
        let b = [c[0], c[1], c[2], c[3]];
        if little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    for pair in data.chunks_exact(8) {
        s.0 = s.0.wrapping_add(word(&pair[..4])).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(word(&pair[4..])).wrapping_add(s.0);
    }
    s
}

fn inspect(log: &[u8]) -> Option<Dropped> {
    if log.is_empty() {
        return None;
    }
    let whole = |why: String| {
        Some(Dropped {
            bytes: log.len() as u64,
            why,
        })
    };
    if log.len() < HEADER {
        return whole(format!(
            "its header is cut short ({} of {HEADER} bytes)",
            log.len()
        ));
    }
    let little_endian = match be(log, 0) {
        MAGIC_LE => true,
        MAGIC_BE => false,
        other => {
            return whole(format!(
                "its header has no WAL magic number ({other:#010x})"
            ));
        }
    };
    let page = be(log, 8) as usize;
    if !(512..=65536).contains(&page) || !page.is_power_of_two() {
        return whole(format!("its header names an impossible page size ({page})"));
    }
    let salts = (be(log, 16), be(log, 20));
    let mut sum = checksum(&log[..24], little_endian, (0, 0));
    if sum != (be(log, 24), be(log, 28)) {
        return whole("its header fails its checksum".into());
    }
    let frame = FRAME_HEADER + page;
    // The end of the last commit frame, and the frames of the current log after it.
    let (mut committed, mut pending) = (HEADER, 0u64);
    let mut at = HEADER;
    let damage = loop {
        let rest = &log[at..];
        if rest.is_empty() {
            break None;
        }
        if rest.len() >= 16 && (be(rest, 8), be(rest, 12)) != salts {
            // A leftover of an earlier log: the current one ended before it.
            break None;
        }
        let n = (at - HEADER) / frame + 1;
        if rest.len() < frame {
            break Some(format!(
                "frame {n} is cut short ({} of {frame} bytes): a write the crash interrupted",
                rest.len()
            ));
        }
        sum = checksum(&rest[..8], little_endian, sum);
        sum = checksum(&rest[FRAME_HEADER..frame], little_endian, sum);
        if sum != (be(rest, 16), be(rest, 20)) {
            break Some(format!("frame {n} fails its checksum"));
        }
        at += frame;
        pending += 1;
        if be(rest, 4) != 0 {
            committed = at;
            pending = 0;
        }
    };
    let end = match damage {
        Some(_) => log.len(),
        None => at,
    };
    let bytes = (end - committed) as u64;
    if bytes == 0 {
        return None;
    }
    let why = match damage {
        Some(why) => why,
        None => format!("{pending} frame(s) of a transaction that never reached its commit"),
    };
    Some(Dropped { bytes, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL of `commits` one-frame transactions (and `open` frames of one that did not
    /// commit), page size 512, as SQLite writes it.
    fn wal(commits: usize, open: usize) -> Vec<u8> {
        let page = 512usize;
        let mut log = Vec::new();
        for v in [MAGIC_LE, 3_007_000, page as u32, 0, 0x1111, 0x2222] {
            log.extend_from_slice(&v.to_be_bytes());
        }
        let mut sum = checksum(&log, true, (0, 0));
        log.extend_from_slice(&sum.0.to_be_bytes());
        log.extend_from_slice(&sum.1.to_be_bytes());
        for i in 0..commits + open {
            let db_size = if i < commits { i as u32 + 2 } else { 0 };
            let mut head = Vec::new();
            for v in [i as u32 + 1, db_size, 0x1111, 0x2222] {
                head.extend_from_slice(&v.to_be_bytes());
            }
            let body = vec![i as u8; page];
            sum = checksum(&head[..8], true, sum);
            sum = checksum(&body, true, sum);
            head.extend_from_slice(&sum.0.to_be_bytes());
            head.extend_from_slice(&sum.1.to_be_bytes());
            log.extend(head);
            log.extend(body);
        }
        log
    }

    #[test]
    fn a_clean_log_drops_nothing() {
        assert_eq!(inspect(&wal(3, 0)), None);
        assert_eq!(inspect(&[]), None);
        let mut with_leftovers = wal(2, 0);
        let mut old = wal(3, 0);
        // A later frame with other salts: a leftover of an earlier log, not damage.
        old[HEADER + 2 * 536 + 8] ^= 0xff;
        with_leftovers.extend_from_slice(&old[HEADER + 2 * 536..]);
        assert_eq!(inspect(&with_leftovers), None);
    }

    #[test]
    fn a_frame_cut_short_is_named_with_what_is_dropped() {
        let mut log = wal(3, 0);
        log.truncate(log.len() - 100);
        let d = inspect(&log).unwrap();
        assert_eq!(d.bytes, 536 - 100);
        assert!(
            d.why.contains("frame 3 is cut short (436 of 536 bytes)"),
            "{}",
            d.why
        );
    }

    #[test]
    fn a_frame_that_fails_its_checksum_drops_it_and_what_follows() {
        let mut log = wal(3, 0);
        log[HEADER + 536 + 100] ^= 1;
        let d = inspect(&log).unwrap();
        assert_eq!(d.bytes, 2 * 536);
        assert!(d.why.contains("frame 2 fails its checksum"), "{}", d.why);
    }

    #[test]
    fn frames_of_an_uncommitted_transaction_are_dropped() {
        let d = inspect(&wal(2, 2)).unwrap();
        assert_eq!(d.bytes, 2 * 536);
        assert!(
            d.why
                .contains("2 frame(s) of a transaction that never reached its commit")
        );
    }

    #[test]
    fn a_damaged_header_drops_the_whole_log() {
        let mut log = wal(1, 0);
        log[12] ^= 1;
        assert!(
            inspect(&log)
                .unwrap()
                .why
                .contains("header fails its checksum")
        );
        assert!(inspect(&log[..10]).unwrap().why.contains("cut short"));
    }
}
