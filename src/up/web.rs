//! The relay's side of `up`'s web page: what the relay knows of each message the fake
//! accepted (its spool record, found by the id in the relay's `Received:` header; its
//! two-hop transcript, found by the fake's transaction id or the relay's id), the latest
//! spool records, the tail of the relay's log, its counters.

use std::path::PathBuf;

use fake_upstream::store::Received;
use fake_upstream::web::RelayView;
use serde_json::Value;

use crate::relay::RelayHandle;

/// The most of the log file read for its last lines.
const LOG_TAIL_MAX: u64 = 1024 * 1024;

pub struct RelayPage {
    pub relay: RelayHandle,
    pub log: PathBuf,
}

/// The relay's id of a message, from the `Received:` header it added
/// (`by HOST (smtp-relay) with ESMTPSA id ID;`).
pub fn relay_id(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let at = text.find("(smtp-relay) with ")?;
    let rest = &text[at..];
    let id = rest.split(" id ").nth(1)?;
    let id: String = id
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .collect();
    (!id.is_empty() && id != "-").then_some(id)
}

impl RelayView for RelayPage {
    fn message(&self, _received: &Received, head: &[u8]) -> Option<Value> {
        let id = relay_id(head)?;
        crate::spool::record(self.relay.spool_dir(), &id)
            .ok()
            .flatten()
    }

    fn transcript(&self, received: &Received, head: &[u8]) -> Option<Vec<String>> {
        let id = relay_id(head);
        // The fake's id is in its 250 (163's `queued as ...,<transid>`), which the relay's
        // transcript shows on its upstream side.
        self.relay
            .transcripts()
            .into_iter()
            .rev()
            .find(|t| t.contains(&received.id) || id.as_ref().is_some_and(|i| t.contains(i)))
            .map(|t| t.lines().map(str::to_string).collect())
    }

    fn log_for(&self, _received: &Received, head: &[u8]) -> Vec<String> {
        let Some(id) = relay_id(head) else {
            return Vec::new();
        };
        self.log(100_000)
            .into_iter()
            .filter(|l| l.contains(&id))
            .collect()
    }

    fn records(&self, limit: usize) -> Vec<Value> {
        let mut all = crate::spool::records(self.relay.spool_dir()).unwrap_or_default();
        all.reverse();
        all.truncate(limit);
        all
    }

    fn log(&self, lines: usize) -> Vec<String> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let from = len.saturating_sub(LOG_TAIL_MAX);
        if f.seek(SeekFrom::Start(from)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let _ = f.take(LOG_TAIL_MAX).read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let mut all: Vec<&str> = text.lines().collect();
        if from > 0 && !all.is_empty() {
            // The first line read may be cut.
            all.remove(0);
        }
        let skip = all.len().saturating_sub(lines);
        all[skip..].iter().map(|l| l.to_string()).collect()
    }

    fn metrics(&self) -> String {
        self.relay.metrics_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_id_comes_from_its_received_header() {
        let head = b"Received: from foxmail.example ([127.0.0.1])\r\n\tby localhost (smtp-relay) with ESMTPSA id 20261203T061500-000001-ab12;\r\n\tThu, 3 Dec 2026 06:15:00 +0000\r\nFrom: a@163.com\r\n\r\n";
        assert_eq!(
            relay_id(head).as_deref(),
            Some("20261203T061500-000001-ab12")
        );
        assert_eq!(
            relay_id(b"Received: from x by y (smtp-relay) with ESMTP id -;\r\n"),
            None
        );
        assert_eq!(
            relay_id(b"Received: from x by mx.example with ESMTP id 1;\r\n"),
            None
        );
    }
}
