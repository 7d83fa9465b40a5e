//! The queue's store: its files after enqueues, updates and removals, a crash's leftovers,
//! the holder and an observer, segments reclaimed, the older layout read.

use super::*;

pub(in crate::queue) fn record(id: &str) -> Queued {
    Queued {
        id: id.into(),
        route: "default".into(),
        mail_from: "<alice@163.com>".parse().unwrap(),
        mail_params: " BODY=8BITMIME".parse().unwrap(),
        rcpts: vec![
            Rcpt {
                to: "<bob@163.com>".parse().unwrap(),
                state: RcptState::Pending { last: None },
            },
            Rcpt {
                to: "<friend@qq.com>".parse().unwrap(),
                state: RcptState::Delivered {
                    reply: "250 OK".into(),
                },
            },
        ],
        auth_user: Some("alice@163.com".into()),
        size: 5,
        received_at: "2026-11-26T07:00:00Z".parse().unwrap(),
        attempts: 0,
        next_attempt: "2026-11-26T07:00:00Z".parse().unwrap(),
        last_error: None,
        trace: None,
    }
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("queue-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn bytes(body: Body) -> Vec<u8> {
    match body {
        Body::Bytes(b) => b,
        Body::File(p) => std::fs::read(p).unwrap(),
    }
}

fn ids(q: &Queue) -> Vec<String> {
    q.list().unwrap().0.into_iter().map(|r| r.id).collect()
}

fn segment_files(dir: &Path) -> Vec<u64> {
    super::super::index::segments(&dir.join("journal")).unwrap()
}

/// A small message lives in the journal, a large one in a file of its own; both read back,
/// change, leave, and are the same after the queue is opened again.
#[tokio::test]
async fn enqueue_read_update_remove_and_reopen() {
    let dir = temp("basic");
    let q = Queue::open(&dir).unwrap();
    q.enqueue(Body::Bytes(b"small".to_vec()), record("m1"))
        .await
        .unwrap();
    let large = vec![b'x'; journal::INLINE_MAX + 1];
    let tmp = q.tmp_path("m2");
    std::fs::write(&tmp, &large).unwrap();
    q.enqueue(Body::File(tmp.clone()), record("m2"))
        .await
        .unwrap();
    assert!(!tmp.exists(), "moved out of tmp/");
    assert!(matches!(q.content_blocking("m1").unwrap(), Body::Bytes(_)));
    assert!(matches!(q.content_blocking("m2").unwrap(), Body::File(_)));
    assert_eq!(bytes(q.content("m1").await.unwrap()), b"small");
    assert_eq!(bytes(q.content("m2").await.unwrap()), large);
    let (all, bad) = q.list().unwrap();
    assert!(bad.is_empty());
    assert_eq!(all, vec![record("m1"), record("m2")]);
    let mut r = q.load("m1").unwrap();
    r.rcpts[0].state = RcptState::Delivered {
        reply: "250 Mail OK".into(),
    };
    r.attempts = 1;
    q.update(&r).await.unwrap();
    assert!(q.load("m1").unwrap().done());
    q.remove("m2").await.unwrap();
    assert!(!q.is_queued("m2").await);
    assert!(
        std::fs::read_dir(dir.join("msg").join(crate::spool::subdir("m2")))
            .unwrap()
            .next()
            .is_none(),
        "the large content's file went with it"
    );
    assert_eq!(q.commits.messages.load(Ordering::Relaxed), 2);
    drop(q);
    let q = Queue::open(&dir).unwrap();
    assert_eq!(q.list().unwrap().0, vec![r]);
    assert_eq!(bytes(q.content("m1").await.unwrap()), b"small");
    q.remove("m1").await.unwrap();
    assert!(q.list().unwrap().0.is_empty());
    let err = q.update(&record("m1")).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The file keeps paths and parameters in their wire form and times in RFC 3339; a record
/// in the form earlier versions wrote (offsets as `+00:00`) reads the same; one whose
/// sender does not parse is refused with the reason, never read as something else.
#[test]
fn a_record_is_typed_and_its_file_is_wire_text() {
    let json = serde_json::to_value(record("m1")).unwrap();
    assert_eq!(json["mail_from"], "<alice@163.com>");
    assert_eq!(json["mail_params"], " BODY=8BITMIME");
    assert_eq!(json["rcpts"][0]["to"], "<bob@163.com>");
    assert_eq!(json["received_at"], "2026-11-26T07:00:00Z");
    let older = r#"{"id":"m1","route":"default","mail_from":"<alice@163.com>",
        "mail_params":" BODY=8BITMIME","rcpts":[{"to":"<bob@163.com>","state":"pending",
        "last":null},{"to":"<friend@qq.com>","state":"delivered","reply":"250 OK"}],
        "auth_user":"alice@163.com","size":5,"received_at":"2026-11-26T07:00:00+00:00",
        "attempts":0,"next_attempt":"2026-11-26T15:00:00+08:00"}"#;
    assert_eq!(serde_json::from_str::<Queued>(older).unwrap(), record("m1"));
    let bad = older.replace("<alice@163.com>", "<alice@>");
    let e = serde_json::from_str::<Queued>(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"<alice@>\""), "{e}");
}

/// One holder at a time; anyone else observes: reads the journal (what the holder wrote
/// shows at once) and hands its changes to the holder, which carries them out at its next
/// look; with no holder to take it, a request gives up and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_and_observers_that_ask_it() {
    let dir = temp("holder");
    let q = Queue::open(&dir).unwrap();
    let again = Queue::open(&dir).unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::WouldBlock);
    assert!(
        again.to_string().contains("held by another process"),
        "{again}"
    );
    let observer = Queue::open_existing(&dir).unwrap();
    assert!(!observer.holds());
    for id in ["o1", "o2"] {
        q.enqueue(Body::Bytes(b"hello".to_vec()), record(id))
            .await
            .unwrap();
    }
    assert_eq!(ids(&observer), ["o1", "o2"]);
    assert_eq!(bytes(observer.content("o2").await.unwrap()), b"hello");
    let mut later = record("o2");
    later.next_attempt = "2030-01-01T00:00:00Z".parse().unwrap();
    q.update(&later).await.unwrap();
    let asked = tokio::spawn({
        let observer = observer.clone();
        async move {
            observer.delete("o1").await.unwrap();
            observer.retry(Some("o2")).await.unwrap()
        }
    });
    while !asked.is_finished() {
        q.take_requests().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(asked.await.unwrap(), 1);
    assert_eq!(ids(&q), ["o2"]);
    assert!(q.load("o2").unwrap().next_attempt < later.next_attempt);
    // A request the holder cannot carry out: the asker hears why.
    let failing = tokio::spawn({
        let observer = observer.clone();
        async move {
            observer
                .request(&Request::Retry {
                    id: Some("ghost".into()),
                })
                .await
        }
    });
    while !failing.is_finished() {
        q.take_requests().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let why = failing.await.unwrap().unwrap_err().to_string();
    assert!(why.contains("ghost: not in the queue"), "{why}");
    assert_eq!(
        std::fs::read_dir(dir.join("requests")).unwrap().count(),
        0,
        "nothing left behind"
    );
    assert_eq!(
        observer.delete("nothing").await.unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    drop(q);
    let after = Queue::open_existing(&dir).unwrap();
    assert!(after.holds(), "the lock went with its holder");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueues_arriving_together_share_a_sync() {
    let dir = temp("group");
    let q = Queue::open(&dir).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("g{i}");
            let body = Body::Bytes(format!("message {i}").into_bytes());
            q.enqueue(body, record(&id)).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(q.list().unwrap().0.len(), 200);
    let c = &q.commits;
    assert_eq!(c.messages.load(Ordering::Relaxed), 200);
    let batches = c.batches.load(Ordering::Relaxed);
    assert_eq!(
        c.journal_syncs.load(Ordering::Relaxed),
        batches,
        "one sync per batch"
    );
    assert!(batches < 200, "{batches} batches for 200 messages");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crash during a write leaves a torn entry at the end of the journal, maybe a content
/// file without its entry and a half-written file in tmp/: none of it was acknowledged, and
/// opening takes it all away, keeping every whole message.
#[tokio::test]
async fn opening_recovers_from_a_crash_mid_write() {
    let dir = temp("recover");
    let q = Queue::open(&dir).unwrap();
    q.enqueue(Body::Bytes(b"kept".to_vec()), record("kept"))
        .await
        .unwrap();
    drop(q);
    let last = *segment_files(&dir).last().unwrap();
    let segment = dir.join("journal").join(journal::segment_name(last));
    let whole = std::fs::metadata(&segment).unwrap().len();
    let mut torn = Vec::new();
    journal::encode(
        &mut torn,
        journal::Kind::Put,
        "torn",
        b"{}",
        b"never acknowledged",
    );
    let mut bytes_now = std::fs::read(&segment).unwrap();
    bytes_now.extend_from_slice(&torn[..torn.len() - 3]);
    std::fs::write(&segment, bytes_now).unwrap();
    let orphan = dir
        .join("msg")
        .join(crate::spool::subdir("orphan"))
        .join("orphan.eml");
    std::fs::write(&orphan, b"never acknowledged").unwrap();
    std::fs::write(dir.join("tmp").join("half.0.eml"), b"half").unwrap();
    let q = Queue::open(&dir).unwrap();
    let (all, bad) = q.list().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].id, "kept");
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        whole,
        "the torn entry cut off"
    );
    assert!(!orphan.exists());
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    q.enqueue(Body::Bytes(b"after".to_vec()), record("after"))
        .await
        .unwrap();
    drop(q);
    let q = Queue::open(&dir).unwrap();
    let (all, bad) = q.list().unwrap();
    assert_eq!(all.len(), 2);
    assert!(bad.is_empty(), "{bad:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_failed_enqueue_leaves_nothing_half_written() {
    let dir = temp("fail");
    let q = Queue::open(&dir).unwrap();
    // The content was never written: the commit fails, nothing is queued, tmp is clean.
    let err = q
        .enqueue(Body::File(q.tmp_path("missing")), record("missing"))
        .await;
    assert!(err.is_err());
    assert!(q.list().unwrap().0.is_empty());
    assert_eq!(std::fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Many messages through small segments: the segments they filled go once they are
/// delivered; a message that stays is copied forward out of the oldest segment instead of
/// keeping every later one; it is intact after that and after a reopen.
#[tokio::test]
async fn segments_are_reclaimed_and_a_message_that_stays_moves_forward() {
    let dir = temp("reclaim");
    let limits = Limits {
        segment_max: 4096,
        max_closed: 2,
    };
    let q = Queue::open_with(&dir, limits).unwrap();
    let stays = b"Subject: waits for days\r\n\r\nstill here\r\n".to_vec();
    q.enqueue(Body::Bytes(stays.clone()), record("stays"))
        .await
        .unwrap();
    for i in 0..300 {
        let id = format!("r{i}");
        q.enqueue(Body::Bytes(vec![b'y'; 500]), record(&id))
            .await
            .unwrap();
        q.remove(&id).await.unwrap();
        assert!(
            segment_files(&dir).len() <= limits.max_closed + 2,
            "{:?}",
            segment_files(&dir)
        );
    }
    let c = &q.commits;
    assert!(c.segments_reclaimed.load(Ordering::Relaxed) > 10);
    assert!(c.relocated.load(Ordering::Relaxed) >= 1);
    assert_eq!(ids(&q), ["stays"]);
    assert_eq!(bytes(q.content("stays").await.unwrap()), stays);
    drop(q);
    let q = Queue::open_with(&dir, limits).unwrap();
    assert_eq!(ids(&q), ["stays"]);
    assert_eq!(bytes(q.content("stays").await.unwrap()), stays);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A queue written before the journal (a `.json` record beside each `.eml`) is moved into
/// the journal when opened: listed, delivered from its file, which goes when it leaves.
#[tokio::test]
async fn a_queue_in_the_older_layout_is_taken_over() {
    let dir = temp("older");
    let sub = dir.join("msg").join(crate::spool::subdir("old1"));
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("old1.eml"), b"old content").unwrap();
    std::fs::write(
        sub.join("old1.json"),
        serde_json::to_vec_pretty(&record("old1")).unwrap(),
    )
    .unwrap();
    let q = Queue::open(&dir).unwrap();
    assert_eq!(q.list().unwrap().0, vec![record("old1")]);
    assert!(!sub.join("old1.json").exists());
    assert_eq!(bytes(q.content("old1").await.unwrap()), b"old content");
    q.remove("old1").await.unwrap();
    assert!(!sub.join("old1.eml").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_never_hold_a_secret_field() {
    let json = serde_json::to_string(&record("x")).unwrap();
    for key in ["password", "secret", "code", "credential"] {
        assert!(!json.to_lowercase().contains(key), "{json}");
    }
}
