//! The fake's web list with 10,000 messages: the first page of 50 (what the page loads), a
//! search by recipient and a full-text search, each with the page's JSON made, as the
//! handler does. Run with `cargo bench --bench web_list`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use fake_upstream::store::Received;
use fake_upstream::web::index::{Entry, Filter, Index};

fn filled(n: usize) -> Arc<Index> {
    let index = Index::new();
    for i in 0..n {
        let received = Received {
            id: format!("_____wBench{i:010}--.{i}S2"),
            mail_from: "<alice@163.com>".into(),
            rcpt_to: vec![format!("user{}@163.com", i % 100)],
            client: "127.0.0.1:2525".parse().unwrap(),
            session: i as u64,
            helo: Some("client.example".into()),
            tls: true,
            auth: Some("alice@163.com".into()),
            size: 1024,
            reply: "250 Mail OK queued as x".into(),
            received_at: format!("2026-12-03T06:00:{:02}+00:00", i % 60),
            files: Vec::new(),
            raw_file: None,
            layout: Default::default(),
            content: Arc::default(),
        };
        let head = format!(
            "From: Alice <alice@163.com>\r\nTo: user{}@163.com\r\nSubject: =?GB2312?B?u+HS6c2o1qo=?= {i}\r\n\r\n",
            i % 100
        );
        index.add(Entry::new("163", received, head.as_bytes(), false));
    }
    index
}

fn list(c: &mut Criterion) {
    let index = filled(10_000);
    let mut g = c.benchmark_group("web list, 10,000 messages");
    g.bench_function("first page of 50", |b| {
        b.iter(|| {
            let page = index.search(&Filter::default(), 0, 50);
            black_box(serde_json::to_vec(&page).unwrap())
        })
    });
    g.bench_function("to=user7@163.com, first 50", |b| {
        let f = Filter::new(None, Some("user7@163.com".into()), None, None, None);
        b.iter(|| black_box(serde_json::to_vec(&index.search(&f, 0, 50)).unwrap()))
    });
    g.bench_function("q=会议通知 9999 (subject, decoded)", |b| {
        let f = Filter::new(None, None, None, None, Some("会议通知 9999".into()));
        b.iter(|| black_box(serde_json::to_vec(&index.search(&f, 0, 50)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, list);
criterion_main!(benches);
