//! The message of a transaction on its way to the spool (and the queue), its JSON record,
//! and the readable summary the record carries.

use super::*;

/// The message of the transaction in progress, on its way to the spool: kept in memory up
/// to `SPOOL_BUFFER` octets and written with its record in one go at the end (one trip to
/// the blocking pool instead of one per write), streamed to its file beyond that.
pub(super) struct Spool {
    pub(super) id: String,
    pub(super) path: PathBuf,
    /// Opened once the message outgrew `pending`.
    pub(super) file: Option<tokio::fs::File>,
    pub(super) pending: Vec<u8>,
    pub(super) size: u64,
    /// The message's first `SUMMARY_READ` octets, for its summary and a bounce's headers
    /// (not read back from the file).
    pub(super) head: Vec<u8>,
}

/// How much of a message the spool holds in memory before it writes: a message this small
/// is written whole at the end, a larger one in pieces this large (each write is a trip to
/// the blocking pool: 64 KiB pieces made a 1 MB message sixteen of them).
pub(super) const SPOOL_BUFFER: usize = 128 * 1024;

impl Spool {
    pub(super) fn new(id: String, path: PathBuf) -> Spool {
        Spool {
            id,
            path,
            file: None,
            pending: Vec::new(),
            size: 0,
            head: Vec::new(),
        }
    }

    /// More of the message.
    pub(super) async fn take(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(data);
        if self.pending.len() < SPOOL_BUFFER {
            return Ok(());
        }
        if self.file.is_none() {
            self.file = Some(crate::spool::create_private(&self.path).await?);
        }
        let file = self.file.as_mut().expect("opened");
        file.write_all(&self.pending).await?;
        self.pending.clear();
        Ok(())
    }

    /// Writes what is left and flushes (the file exists afterwards).
    pub(super) async fn finish(mut self) -> std::io::Result<()> {
        self.write_out().await
    }

    /// Writes all it holds to its file (created if need be) and flushes: the file then holds
    /// the whole message so far.
    pub(super) async fn write_out(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            self.file = Some(crate::spool::create_private(&self.path).await?);
        }
        let file = self.file.as_mut().expect("opened");
        file.write_all(&self.pending).await?;
        self.pending.clear();
        file.flush().await
    }

    /// Writes what is left of the message (a message held whole in memory by `writers`), and
    /// its record, one line, to a writer's record log.
    pub(super) async fn keep(self, record: Vec<u8>, writers: &SpoolWriters) -> std::io::Result<()> {
        let eml = match self.file {
            None => Some((self.path, self.pending)),
            Some(mut file) => {
                file.write_all(&self.pending).await?;
                file.flush().await?;
                None
            }
        };
        writers.write(&self.id, eml, record).await
    }
}

/// Threads that write finished messages to the spool and append their records to the record
/// logs, each in the order they come, instead of a trip to tokio's blocking pool per message:
/// under load a writer takes message after message without being woken for each (measured:
/// the pool's trip and its wake-ups were a large part of the spool's cost at 100 messages per
/// connection). Each writer appends to a log of its own (`spool/records/<n>.jsonl`, one JSON
/// object per line), kept open: a record is one `write`, not a file created per message
/// (measured: the second file was 28-40% of a small message's cost in queue mode, one per connection).
pub(super) struct SpoolWriters {
    queues: Vec<std::sync::mpsc::Sender<SpoolJob>>,
}

struct SpoolJob {
    /// The message's file and its content, when the writer writes it (a small message).
    eml: Option<(PathBuf, Vec<u8>)>,
    record: Vec<u8>,
    done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
}

/// A writer's record log: the file it appends to, until it is `max_len` long or has been idle
/// for `idle` ([`RECORD_LOG_MAX`], [`RECORD_LOG_IDLE`]; the spool's sweep removes logs by age
/// and size like any other file: a log still being written to is always among the newest).
struct RecordLog {
    dir: PathBuf,
    /// The next log's number, shared by the writers.
    next: Arc<AtomicU64>,
    max_len: u64,
    idle: Duration,
    open: Option<(std::fs::File, u64, std::time::Instant)>,
}

/// A record log is closed past this size...
const RECORD_LOG_MAX: u64 = 64 * 1024 * 1024;
/// ... or after this long without a record (the next one opens a new log).
const RECORD_LOG_IDLE: Duration = Duration::from_secs(600);

impl RecordLog {
    /// Appends one record (a line).
    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let stale = self
            .open
            .as_ref()
            .is_none_or(|(_, len, last)| *len >= self.max_len || last.elapsed() >= self.idle);
        if stale {
            self.open = Some((
                crate::spool::new_record_log(&self.dir, &self.next)?,
                0,
                std::time::Instant::now(),
            ));
        }
        let (file, len, last) = self.open.as_mut().expect("opened");
        file.write_all(record)?;
        *len += record.len() as u64;
        *last = std::time::Instant::now();
        Ok(())
    }
}

impl SpoolWriters {
    /// One writer per core, four at most, for the spool in `dir`.
    pub(super) fn start(dir: &std::path::Path) -> std::io::Result<SpoolWriters> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let records = dir.join(crate::spool::RECORDS);
        let next = Arc::new(AtomicU64::new(crate::spool::next_record_log(&records)?));
        let mut queues = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel::<SpoolJob>();
            let mut log = RecordLog {
                dir: records.clone(),
                next: next.clone(),
                max_len: RECORD_LOG_MAX,
                idle: RECORD_LOG_IDLE,
                open: None,
            };
            std::thread::Builder::new()
                .name(format!("spool-writer-{i}"))
                .spawn(move || {
                    // Ends when the relay (every sender) is gone.
                    for job in rx {
                        let written = match &job.eml {
                            Some((path, content)) => crate::spool::write_private(path, content),
                            None => Ok(()),
                        }
                        .and_then(|()| log.append(&job.record));
                        let _ = job.done.send(written);
                    }
                })?;
            queues.push(tx);
        }
        Ok(SpoolWriters { queues })
    }

    /// Writes message `id`'s content (if given) and appends its record; a message's id picks
    /// its writer, so that one subdirectory's files are mostly created by one thread.
    async fn write(
        &self,
        id: &str,
        eml: Option<(PathBuf, Vec<u8>)>,
        mut record: Vec<u8>,
    ) -> std::io::Result<()> {
        let gone = || std::io::Error::other("the spool's writer has stopped");
        let (done, written) = tokio::sync::oneshot::channel();
        let i = (crate::fnv64(id.as_bytes()) >> 32) as usize % self.queues.len();
        record.push(b'\n');
        self.queues[i]
            .send(SpoolJob { eml, record, done })
            .map_err(|_| gone())?;
        written.await.map_err(|_| gone())?
    }
}

/// A message's content being written for the queue.
pub(super) struct QueueFile {
    /// The same buffered writer as the spool copy's: a small message stays in memory (it
    /// goes into the queue's journal), a larger one is streamed to a file under `tmp/`
    /// unless it `shares_spool`.
    pub(super) content: Spool,
    /// The relay's `Received:` header, kept in the record and sent before the content.
    pub(super) trace: String,
    /// The queue and the spool are on one file system: a large message's queue copy is the
    /// spool's file, hard-linked (its content is then not kept here).
    pub(super) shares_spool: bool,
    /// Outgrew memory and lives in the spool's file.
    pub(super) in_spool: bool,
    /// The first write error (the message is then refused with 452 4.3.1).
    pub(super) error: Option<String>,
}

/// A readable summary of a message for the spool JSON: the Subject with its RFC 2047 words
/// decoded, the From header, and the first text part decoded from base64 or quoted-printable
/// in its charset (GB2312, GBK, Big5, UTF-8... as mail-parser knows them).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub subject: Option<String>,
    pub from: Option<String>,
    /// At most `SUMMARY_TEXT` characters.
    pub text: Option<String>,
}

/// How much of a message is kept for its summary (and a bounce's headers), and how much
/// text the summary keeps.
pub(super) const SUMMARY_READ: usize = 64 * 1024;
pub(super) const SUMMARY_TEXT: usize = 2000;

/// Summarises the start of a message (headers and the first text part).
pub fn summarize(message: &[u8]) -> Summary {
    let recoded = utf8_header(message);
    let message = recoded.as_deref().unwrap_or(message);
    let Some(parsed) = mail_parser::MessageParser::default().parse(message) else {
        return Summary::default();
    };
    let from = parsed
        .from()
        .and_then(|a| a.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(n), Some(addr)) => format!("{n} <{addr}>"),
            (None, Some(addr)) => addr.to_string(),
            (Some(n), None) => n.to_string(),
            (None, None) => String::new(),
        });
    Summary {
        subject: parsed.subject().map(str::to_string),
        from,
        text: parsed
            .body_text(0)
            .map(|t| t.chars().take(SUMMARY_TEXT).collect::<String>()),
    }
}

/// A message whose header holds raw 8-bit octets that are not UTF-8 (older Chinese clients
/// send a GBK Subject so, with `BODY=8BITMIME`), with that header decoded as the message's
/// charset says (the first `charset=` in it, or in its first 64 KiB), or as GB18030 when none
/// does or that fails, and written back as UTF-8; `None` when the header is ASCII or UTF-8.
pub(super) fn utf8_header(message: &[u8]) -> Option<Vec<u8>> {
    let end = memchr::memmem::find(message, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(message, b"\n\n"))
        .unwrap_or(message.len());
    let head = &message[..end];
    if std::str::from_utf8(head).is_ok() {
        return None;
    }
    let gb18030 = encoding_rs::GB18030;
    let scan = &message[..message.len().min(64 * 1024)];
    let declared = memchr::memmem::find_iter(&scan.to_ascii_lowercase(), b"charset=")
        .next()
        .and_then(|i| {
            let label: Vec<u8> = scan[i + 8..]
                .iter()
                .copied()
                .skip_while(|c| *c == b'"')
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b':' | b'.'))
                .collect();
            encoding_rs::Encoding::for_label(&label)
        })
        .filter(|e| *e != encoding_rs::UTF_8);
    let (mut text, _, mut bad) = declared.unwrap_or(gb18030).decode(head);
    if bad && declared.is_some() {
        (text, _, bad) = gb18030.decode(head);
    }
    if bad {
        return None;
    }
    let mut out = text.into_owned().into_bytes();
    out.extend_from_slice(&message[end..]);
    Some(out)
}

/// What a message's line in the spool's record log (`spool/records/<n>.jsonl`) holds (never
/// a secret).
#[derive(serde::Serialize)]
pub(super) struct SpoolRecord<'a> {
    pub(super) id: &'a str,
    pub(super) mail_from: String,
    pub(super) rcpt_to: Vec<String>,
    pub(super) client: String,
    pub(super) helo: Option<&'a str>,
    pub(super) tls: bool,
    pub(super) auth: Option<&'a str>,
    pub(super) size: u64,
    /// The reply the client got.
    pub(super) reply: String,
    /// Each upstream of the transaction: its replies per recipient and to the message.
    pub(super) upstreams: Vec<UpstreamRecord<'a>>,
    /// The bounce sent for recipients that failed after being accepted (`<id>.dsn.eml`).
    pub(super) dsn: Option<String>,
    pub(super) summary: Summary,
}

#[derive(serde::Serialize)]
pub(super) struct UpstreamRecord<'a> {
    /// `default`, or the route's label.
    pub(super) route: &'a str,
    pub(super) upstream: &'a str,
    /// Every RCPT sent there and the reply, as it was said.
    pub(super) rcpts: Vec<RcptRecord<'a>>,
    /// Its reply to the message (DATA refusal, or final reply), as it was said.
    pub(super) reply: Option<String>,
}

#[derive(serde::Serialize)]
pub(super) struct RcptRecord<'a> {
    /// `<bob@163.com>`: the wire form.
    #[serde(serialize_with = "display")]
    pub(super) to: &'a ForwardPath,
    /// `250 Mail OK`: the reply's wire form (lines joined by CRLF).
    #[serde(serialize_with = "display")]
    pub(super) reply: &'a Reply,
}

/// A typed value in the record: written in its wire form.
fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(super) fn spool_json(
    spool: &Spool,
    env: &Envelope,
    s: &Session,
    reply: &Reply,
    summary: Summary,
    dsn: Option<String>,
) -> Vec<u8> {
    let cfg = &s.shared.config;
    let record = SpoolRecord {
        id: &spool.id,
        mail_from: env
            .from
            .as_ref()
            .map(ReversePath::to_string)
            .unwrap_or_default(),
        rcpt_to: env.rcpts.iter().map(|(r, _)| r.to_string()).collect(),
        client: s.peer.to_string(),
        helo: s.conn.session().helo(),
        tls: s.tls,
        auth: s.conn.session().authenticated(),
        size: spool.size,
        reply: reply.to_string(),
        upstreams: s
            .legs
            .iter()
            .filter(|l| !l.rcpt_replies.is_empty())
            .map(|l| UpstreamRecord {
                route: cfg.route_label(l.route),
                upstream: &cfg.route_upstream(l.route).name,
                rcpts: l
                    .rcpt_replies
                    .iter()
                    .map(|(to, reply)| RcptRecord { to, reply })
                    .collect(),
                reply: l.message.answer().map(Reply::to_string),
            })
            .collect(),
        dsn,
        summary,
    };
    serde_json::to_vec(&record).expect("serializable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &std::path::Path, max_len: u64) -> RecordLog {
        RecordLog {
            dir: dir.to_path_buf(),
            next: Arc::new(AtomicU64::new(crate::spool::next_record_log(dir).unwrap())),
            max_len,
            idle: Duration::from_secs(3600),
            open: None,
        }
    }

    /// Records are lines of a log that goes on past a run's end (numbering after the highest,
    /// never replacing one), a new log once one is long enough; what a reader gets is every
    /// whole record in order, a torn last line skipped.
    #[test]
    fn record_logs_append_rotate_and_never_replace() {
        let spool = fake_upstream::testing::temp_dir("record-logs");
        crate::spool::create(&spool).unwrap();
        let dir = spool.join(crate::spool::RECORDS);
        let mut first = log(&dir, 1024);
        for i in 0..3 {
            first
                .append(format!("{{\"id\":\"m{i}\"}}\n").as_bytes())
                .unwrap();
        }
        drop(first);
        let names = |dir: &std::path::Path| {
            let mut n: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&dir), ["00000001.jsonl"]);
        // The next run: a log of its own; 40 octets a record, a new log past 100.
        let mut second = log(&dir, 100);
        for i in 3..8 {
            second
                .append(format!("{{\"id\":\"m{i}\",\"pad\":\"{:>16}\"}}\n", "").as_bytes())
                .unwrap();
        }
        assert_eq!(
            names(&dir),
            ["00000001.jsonl", "00000002.jsonl", "00000003.jsonl"]
        );
        let mut torn = std::fs::read(dir.join("00000003.jsonl")).unwrap();
        torn.extend_from_slice(b"{\"id\":\"torn");
        std::fs::write(dir.join("00000003.jsonl"), torn).unwrap();
        let ids: Vec<String> = crate::spool::records(&spool)
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"]);
        assert_eq!(
            crate::spool::record(&spool, "m5").unwrap().unwrap()["id"],
            "m5"
        );
        assert!(crate::spool::record(&spool, "torn").unwrap().is_none());
        // A log that exists is never opened again: the numbering goes past it.
        std::fs::write(dir.join("00000004.jsonl"), b"{\"id\":\"other\"}\n").unwrap();
        let next = AtomicU64::new(4);
        drop(crate::spool::new_record_log(&dir, &next).unwrap());
        assert_eq!(
            std::fs::read(dir.join("00000004.jsonl")).unwrap(),
            b"{\"id\":\"other\"}\n"
        );
        assert!(dir.join("00000005.jsonl").exists());
    }
}
