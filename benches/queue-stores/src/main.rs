//! Each store takes MESSAGES messages in batches of 20 (20 clients whose enqueues arrive
//! together), each batch made durable before the next (the clients' 250), and the messages of
//! five batches before leave (delivered): the churn a queue sees. Every store is measured once
//! per round, the order rotating; medians and min-max are printed.

use std::io::Write;
use std::time::Instant;

const BATCH: usize = 20;

fn record(i: usize) -> Vec<u8> {
    format!(r#"{{"id":"m{i:08}","route":"default","mail_from":"<load@example.com>","mail_params":"","rcpts":[{{"to":"<rcpt@example.org>","state":"pending","last":null}}],"auth_user":null,"size":1024,"received_at":"2026-12-02T07:00:00Z","attempts":0,"next_attempt":"2026-12-02T07:00:00Z"}}"#).into_bytes()
}

fn files(dir: &std::path::Path, n: usize, content: &[u8]) {
    let tmp = dir.join("tmp");
    let msg = dir.join("msg");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&msg).unwrap();
    for b in 0..n / BATCH {
        std::thread::scope(|s| {
            for k in 0..BATCH {
                let i = b * BATCH + k;
                let (tmp, msg) = (&tmp, &msg);
                s.spawn(move || {
                    for (ext, bytes) in [("eml", content.to_vec()), ("json", record(i))] {
                        let p = tmp.join(format!("m{i}.{ext}"));
                        let mut f = std::fs::File::create(&p).unwrap();
                        f.write_all(&bytes).unwrap();
                        f.sync_all().unwrap();
                        std::fs::rename(&p, msg.join(format!("m{i}.{ext}"))).unwrap();
                    }
                });
            }
        });
        std::fs::File::open(&msg).unwrap().sync_all().unwrap();
        // deliveries: the batch 5 before leaves the queue
        if b >= 5 {
            for k in 0..BATCH {
                let i = (b - 5) * BATCH + k;
                std::fs::remove_file(msg.join(format!("m{i}.json"))).unwrap();
                std::fs::remove_file(msg.join(format!("m{i}.eml"))).unwrap();
            }
            std::fs::File::open(&msg).unwrap().sync_all().unwrap();
        }
    }
}

fn journal(dir: &std::path::Path, n: usize, content: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("0.log")).unwrap();
    let mut buf = Vec::new();
    for b in 0..n / BATCH {
        buf.clear();
        for k in 0..BATCH {
            let i = b * BATCH + k;
            let r = record(i);
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(content.len() as u32).to_le_bytes());
            buf.extend_from_slice(&r);
            buf.extend_from_slice(content);
            if b >= 5 {
                buf.extend_from_slice(format!("del m{}", (b - 5) * BATCH + k).as_bytes());
            }
        }
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
}

fn redb_run(dir: &std::path::Path, n: usize, content: &[u8]) {
    use redb::{Database, Durability, TableDefinition};
    const T: TableDefinition<&str, &[u8]> = TableDefinition::new("q");
    std::fs::create_dir_all(dir).unwrap();
    let db = Database::create(dir.join("q.redb")).unwrap();
    for b in 0..n / BATCH {
        let mut tx = db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for k in 0..BATCH {
                let i = b * BATCH + k;
                let mut v = record(i);
                v.extend_from_slice(content);
                t.insert(format!("m{i:08}").as_str(), v.as_slice()).unwrap();
                if b >= 5 {
                    t.remove(format!("m{:08}", (b - 5) * BATCH + k).as_str()).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
}

fn fjall_run(dir: &std::path::Path, n: usize, content: &[u8]) {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let db = Database::builder(dir).open().unwrap();
    let ks = db.keyspace("q", KeyspaceCreateOptions::default).unwrap();
    for b in 0..n / BATCH {
        let mut batch = db.batch();
        for k in 0..BATCH {
            let i = b * BATCH + k;
            let mut v = record(i);
            v.extend_from_slice(content);
            batch.insert(&ks, format!("m{i:08}"), v);
            if b >= 5 {
                batch.remove(&ks, format!("m{:08}", (b - 5) * BATCH + k));
            }
        }
        batch.commit().unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
}

fn once(which: &str, n: usize, size: usize, base: &std::path::Path) -> f64 {
    let dir = base.join(format!("{which}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let content = vec![b'x'; size];
    let t = Instant::now();
    match which {
        "files" => files(&dir, n, &content),
        "journal" => journal(&dir, n, &content),
        "redb" => redb_run(&dir, n, &content),
        "fjall" => fjall_run(&dir, n, &content),
        _ => unreachable!(),
    }
    let s = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    n as f64 / s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(3, |a| a.parse().expect("ROUNDS"));
    let base = std::path::PathBuf::from(args.get(2).map_or("target/queue-stores", |a| a.as_str()));
    std::fs::create_dir_all(&base).expect("the directory to measure in");
    let stores = ["files", "journal", "redb", "fjall"];
    for (size, n) in [(1024usize, 4000usize), (1024 * 1024, 400)] {
        let mut got: Vec<Vec<f64>> = vec![Vec::new(); stores.len()];
        for round in 0..rounds {
            for k in 0..stores.len() {
                let i = (k + round) % stores.len();
                got[i].push(once(stores[i], n, size, &base));
            }
        }
        for (store, mut v) in stores.iter().zip(got) {
            v.sort_by(f64::total_cmp);
            println!(
                "{size:>8} B  {store:<8} {:>8.0} msgs/s ({:.0}-{:.0}), {rounds} rounds of {n}",
                v[v.len() / 2],
                v[0],
                v[v.len() - 1]
            );
        }
    }
}
