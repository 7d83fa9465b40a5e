//! Benchmarks of the protocol crate's hot paths: command parsing (commands per second) and
//! DATA decoding and encoding of 1 MiB and 64 MiB bodies (bytes per second), streamed in
//! 64 KiB reads as a socket driver would feed them.
//!
//! Run with `cargo bench --bench proto`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smtp_wire::{BareLineEnding, Command, DataDecoder, DataEncoder, DataProgress};

const READ: usize = 64 * 1024;

/// A plausible message: 76-column text lines, some starting with a dot, CRLF line ends.
fn body(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 100);
    out.extend_from_slice(
        b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: bench\r\n\r\n",
    );
    let mut n = 0u64;
    while out.len() < size {
        n += 1;
        if n.is_multiple_of(50) {
            out.extend_from_slice(
                b".a line that starts with a dot and must be stuffed on the wire\r\n",
            );
        } else {
            out.extend_from_slice(
                b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n",
            );
        }
    }
    out.truncate(size - 2);
    out.extend_from_slice(b"\r\n");
    out
}

fn parse(c: &mut Criterion) {
    let lines: [&[u8]; 8] = [
        b"EHLO client.example.com",
        b"MAIL FROM:<alice@example.com> SIZE=12345 BODY=8BITMIME",
        b"RCPT TO:<bob@example.org>",
        b"RCPT TO: <\"john smith\"@example.net> NOTIFY=SUCCESS,FAILURE",
        b"DATA",
        b"AUTH PLAIN AG1lQDE2My5jb20AcmlnaHQ=",
        b"NOOP",
        b"QUIT",
    ];
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("commands", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(Command::parse(black_box(line)).ok());
            }
        })
    });
    g.finish();
}

fn data(c: &mut Criterion) {
    for (name, size, samples) in [("1MiB", 1 << 20, 50), ("64MiB", 64 << 20, 10)] {
        let body = body(size);
        let wire = DataEncoder::encode_all(&body);
        let mut g = c.benchmark_group("data");
        g.sample_size(samples);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(format!("decode/{name}"), |b| {
            let mut out = Vec::with_capacity(2 * READ);
            b.iter(|| {
                let mut d = DataDecoder::new(u64::MAX, BareLineEnding::Reject);
                for chunk in wire.chunks(READ) {
                    out.clear();
                    if let DataProgress::Done { .. } = d.decode(chunk, &mut out) {
                        break;
                    }
                    black_box(&out);
                }
                black_box(d.outcome())
            })
        });
        g.bench_function(format!("encode/{name}"), |b| {
            let mut out = Vec::with_capacity(2 * READ);
            b.iter(|| {
                let mut e = DataEncoder::new();
                for chunk in body.chunks(READ) {
                    out.clear();
                    e.encode(chunk, &mut out);
                    black_box(&out);
                }
                out.clear();
                e.finish(&mut out);
                black_box(&out);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, parse, data);
criterion_main!(benches);
