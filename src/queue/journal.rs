//! The queue's journal on disk: append-only segment files (`journal/<seq>.log`, `seq` in 16
//! hex digits so that names sort as numbers), each a run of entries:
//!
//! ```text
//! magic "SQJ1" | body length u32 | CRC-32 of the body u32 | body
//! body: kind u8 | id length u16 | id | record length u32 | record (JSON) | content
//! ```
//!
//! (integers little-endian). A `put` carries a message's record and, for a small message,
//! its content; a large message's content is a file of its own (`external`). An `update`
//! carries a record that replaces the message's; a `remove` only the id. A segment is read
//! front to back; the first entry that is torn (a crash during its write) or fails its CRC
//! ends what is read of it: nothing from it on was acknowledged.
//!
//! This module only encodes and decodes; the queue ([`super::store`]) decides what is
//! written when and keeps the index.

use std::io::Read;

const MAGIC: &[u8; 4] = b"SQJ1";
const HEADER: usize = 12;
/// Larger bodies are corruption, not entries (a record is a few hundred octets; inline
/// content is at most [`INLINE_MAX`]).
const MAX_BODY: usize = INLINE_MAX + 1024 * 1024;

/// Content up to this size is kept in the journal; larger content in a file of its own.
pub const INLINE_MAX: usize = 128 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Record and content in the entry.
    Put = 1,
    /// Record in the entry, content in `msg/<h>/<id>.eml`.
    PutExternal = 2,
    /// A newer record for the message.
    Update = 3,
    /// The message left the queue.
    Remove = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Put,
            2 => Kind::PutExternal,
            3 => Kind::Update,
            4 => Kind::Remove,
            _ => return None,
        })
    }
}

/// Appends one entry to `out`; returns the offset of its content within `out`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, id: &str, record: &[u8], content: &[u8]) -> usize {
    let body_len = 1 + 2 + id.len() + 4 + record.len() + content.len();
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let body = out.len();
    out.push(kind as u8);
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    out.extend_from_slice(record);
    let content_at = out.len();
    out.extend_from_slice(content);
    let crc = crc32fast::hash(&out[body..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    content_at
}

/// One entry as read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub id: String,
    pub record: Vec<u8>,
    /// Where the content is in the segment file, and how long.
    pub content_at: u64,
    pub content_len: u32,
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// At the end of the file, after a whole entry.
    Clean,
    /// At `offset`, which starts an entry that is not whole or not right (why). In the last
    /// segment, a crash during a write; elsewhere, damage.
    Torn { offset: u64, why: String },
}

/// Reads a segment's entries in order, calling `each` for each; stops at the first bad one.
/// Reads the file in one pass, holding one entry at a time.
pub fn scan(reader: impl Read, mut each: impl FnMut(Entry)) -> std::io::Result<End> {
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, reader);
    let mut offset = 0u64;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        let got = read_full(&mut reader, &mut header)?;
        if got == 0 {
            return Ok(End::Clean);
        }
        let torn = |why: &str| {
            Ok(End::Torn {
                offset,
                why: why.to_string(),
            })
        };
        if got < HEADER {
            return torn("a header cut short");
        }
        if &header[..4] != MAGIC {
            return torn("no entry starts here");
        }
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 octets")) as usize;
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 octets"));
        if len > MAX_BODY {
            return torn("an entry longer than any the queue writes");
        }
        body.resize(len, 0);
        if read_full(&mut reader, &mut body)? < len {
            return torn("an entry cut short");
        }
        if crc32fast::hash(&body) != crc {
            return torn("an entry whose checksum does not match");
        }
        let Some(entry) = parse_body(&body, offset + HEADER as u64) else {
            return torn("an entry whose fields do not fit");
        };
        each(entry);
        offset += (HEADER + len) as u64;
    }
}

fn parse_body(body: &[u8], body_at: u64) -> Option<Entry> {
    let kind = Kind::from_byte(*body.first()?)?;
    let id_len = u16::from_le_bytes(body.get(1..3)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(body.get(3..3 + id_len)?)
        .ok()?
        .to_string();
    let at = 3 + id_len;
    let rec_len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
    let record = body.get(at + 4..at + 4 + rec_len)?.to_vec();
    let content_at = at + 4 + rec_len;
    let content_len = (body.len() - content_at) as u32;
    if kind != Kind::Put && content_len != 0 {
        return None;
    }
    Some(Entry {
        kind,
        id,
        record,
        content_at: body_at + content_at as u64,
        content_len,
    })
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A segment's file name.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.log")
}

/// The sequence number of a segment file's name, if it is one.
pub fn segment_seq(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".log")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(bytes: &[u8]) -> (Vec<Entry>, End) {
        let mut all = Vec::new();
        let end = scan(bytes, |e| all.push(e)).unwrap();
        (all, end)
    }

    #[test]
    fn entries_read_back_as_written() {
        let mut seg = Vec::new();
        let at = encode(
            &mut seg,
            Kind::Put,
            "m1",
            b"{\"a\":1}",
            b"Subject: x\r\n\r\nhi\r\n",
        );
        encode(&mut seg, Kind::Update, "m1", b"{\"a\":2}", b"");
        encode(&mut seg, Kind::PutExternal, "m2", b"{}", b"");
        encode(&mut seg, Kind::Remove, "m1", b"", b"");
        let (all, end) = entries(&seg);
        assert_eq!(end, End::Clean);
        let kinds: Vec<_> = all.iter().map(|e| (e.kind, e.id.as_str())).collect();
        assert_eq!(
            kinds,
            [
                (Kind::Put, "m1"),
                (Kind::Update, "m1"),
                (Kind::PutExternal, "m2"),
                (Kind::Remove, "m1")
            ]
        );
        assert_eq!(all[0].content_at, at as u64);
        let c = &seg[at..at + all[0].content_len as usize];
        assert_eq!(c, b"Subject: x\r\n\r\nhi\r\n");
        assert_eq!(all[1].record, b"{\"a\":2}");
    }

    /// A crash mid-write leaves a torn tail: every cut of the last entry reads as the entries
    /// before it and a torn end at the last entry's offset; a flipped octet anywhere in an
    /// entry is caught by its checksum.
    #[test]
    fn a_torn_or_damaged_entry_ends_the_segment() {
        let mut seg = Vec::new();
        encode(&mut seg, Kind::Put, "m1", b"{}", b"one");
        let second = seg.len();
        encode(&mut seg, Kind::Put, "m2", b"{}", b"two");
        for cut in second + 1..seg.len() {
            let (all, end) = entries(&seg[..cut]);
            assert_eq!(all.len(), 1, "cut at {cut}");
            assert!(
                matches!(end, End::Torn { offset, .. } if offset == second as u64),
                "cut at {cut}: {end:?}"
            );
        }
        for flip in second..seg.len() {
            let mut bad = seg.clone();
            bad[flip] ^= 0x20;
            let (all, end) = entries(&bad);
            assert_eq!(all.len(), 1, "flip at {flip}");
            assert!(matches!(end, End::Torn { .. }), "flip at {flip}");
        }
    }

    #[test]
    fn segment_names_sort_as_numbers() {
        assert_eq!(segment_name(10), "000000000000000a.log");
        assert_eq!(segment_seq(&segment_name(10)), Some(10));
        assert_eq!(segment_seq("a.log"), None);
        assert_eq!(segment_seq("000000000000000a.tmp"), None);
        assert!(segment_name(9) < segment_name(10));
    }
}
