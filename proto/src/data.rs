//! The DATA phase: a streaming decoder (server side: end detection, dot-unstuffing, size
//! limit, bare CR/LF policy) and a streaming encoder (client side: CRLF normalisation,
//! dot-stuffing, terminator). Both take chunks of any size and scan with `memchr`, copying
//! each run of ordinary bytes once.
//!
//! # End of data and smuggling
//! The decoder starts at the start of a line (the CRLF of the `DATA` command counts), and data
//! ends only at `CRLF . CRLF`. `\n.\n`, `\r.\r`, `\n.\r\n`, `\r.\r\n`, `\r\n.\r`, `\r\n.\n`
//! and every other bare-CR/LF or NUL variant are content (smtp-edge-cases 70-76). A NUL octet
//! is never a line's start: `CRLF NUL . CRLF` is content, not an end. What happens to a bare CR
//! or LF, and to a NUL (which a next hop that strips NULs would turn into an end of data), is the
//! [`BareLineEnding`] policy:
//! - [`BareLineEnding::Reject`] (default): the bytes are kept as they came, the outcome counts
//!   them, and the session answers `550 5.6.0` after the terminator: nothing is delivered.
//! - [`BareLineEnding::Normalize`]: each bare CR and bare LF becomes CRLF in the output and each
//!   NUL is removed, so the smuggled text turns into visible content. A normalised line end (or
//!   a line start behind a removed NUL) does not count as a start of line for unstuffing or for
//!   the terminator: only a real CRLF does.
//!
//! The encoder turns any bare CR or LF into CRLF, leaves out NUL octets and stuffs every `.`
//! that starts a line, so what it writes never contains a terminator before its own, nor an
//! octet that a next hop could strip to make one.

use memchr::memchr3;

/// What to do with a bare CR or LF inside message data. See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BareLineEnding {
    #[default]
    Reject,
    Normalize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeState {
    /// At the start of a line: a `.` here is either stuffing or the terminator.
    LineStart,
    /// Inside a line.
    Mid,
    /// Inside a line, just after a CR (already emitted).
    Cr,
    /// After a `.` at the start of a line (not emitted).
    Dot,
    /// After `.` CR at the start of a line (neither emitted).
    DotCr,
    /// The terminator was seen.
    Done,
}

/// Progress of [`DataDecoder::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataProgress {
    /// All input was consumed; the message goes on.
    NeedMore,
    /// The terminator ended at `consumed`; the bytes after it are the next commands.
    Done { consumed: usize },
}

/// What the decoder saw, for the session's verdict after the terminator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataOutcome {
    /// Decoded size in octets (after unstuffing and normalisation), counted past the limit.
    pub size: u64,
    /// The size limit was passed: the output stopped at `limit` octets.
    pub too_large: bool,
    pub bare_lf: u64,
    pub bare_cr: u64,
    /// NUL octets seen (removed under [`BareLineEnding::Normalize`]).
    pub nul: u64,
    /// The policy in force, so the verdict knows whether bare line ends are an error.
    pub policy: BareLineEnding,
}

impl DataOutcome {
    /// Whether bare line endings make this message unacceptable under its policy.
    pub fn has_forbidden_line_endings(&self) -> bool {
        self.policy == BareLineEnding::Reject && (self.bare_lf > 0 || self.bare_cr > 0)
    }

    /// Whether NUL octets make this message unacceptable under its policy.
    pub fn has_forbidden_nul(&self) -> bool {
        self.policy == BareLineEnding::Reject && self.nul > 0
    }
}

/// Bare CR, bare LF and NUL counted across the chunks of one BDAT transaction (RFC 3030: the
/// content is not dot-stuffed, but unless it is `BODY=BINARYMIME` it is still a message whose
/// lines end in CRLF, and a relay sends it on as DATA to a next hop that may read a bare line
/// end differently). A CR that ends one chunk and an LF that starts the next are one CRLF.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkScan {
    pending_cr: bool,
    pub bare_cr: u64,
    pub bare_lf: u64,
    pub nul: u64,
}

impl ChunkScan {
    /// Counts the next bytes of the transaction's content.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        if self.pending_cr {
            match bytes.first() {
                None => return,
                Some(b'\n') => i = 1,
                Some(_) => self.bare_cr += 1,
            }
            self.pending_cr = false;
        }
        while let Some(p) = memchr3(b'\r', b'\n', 0, &bytes[i..]) {
            let at = i + p;
            i = at + 1;
            match bytes[at] {
                b'\r' => match bytes.get(at + 1) {
                    Some(b'\n') => i = at + 2,
                    Some(_) => self.bare_cr += 1,
                    None => self.pending_cr = true,
                },
                b'\n' => self.bare_lf += 1,
                _ => self.nul += 1,
            }
        }
    }

    /// The content ended: a CR at its very end was bare.
    pub fn finish(&mut self) {
        if self.pending_cr {
            self.bare_cr += 1;
            self.pending_cr = false;
        }
    }

    /// No bare CR, bare LF or NUL so far.
    pub fn clean(&self) -> bool {
        self.bare_cr == 0 && self.bare_lf == 0 && self.nul == 0
    }
}

/// Server-side DATA decoder.
#[derive(Clone, Debug)]
pub struct DataDecoder {
    state: DecodeState,
    limit: u64,
    outcome: DataOutcome,
}

impl DataDecoder {
    /// `limit`: the most octets of decoded message to output; past it the decoder keeps
    /// reading to the terminator but outputs nothing more.
    pub fn new(limit: u64, policy: BareLineEnding) -> DataDecoder {
        DataDecoder {
            state: DecodeState::LineStart,
            limit,
            outcome: DataOutcome {
                policy,
                ..DataOutcome::default()
            },
        }
    }

    pub fn outcome(&self) -> DataOutcome {
        self.outcome
    }

    pub fn is_done(&self) -> bool {
        self.state == DecodeState::Done
    }

    /// Outputs message bytes up to the limit: whatever the chunking, the output is the first
    /// `limit` octets of the decoded message.
    fn put(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.outcome.size);
        let take = (bytes.len() as u64).min(room) as usize;
        out.extend_from_slice(&bytes[..take]);
        self.outcome.size += bytes.len() as u64;
        if self.outcome.size > self.limit {
            self.outcome.too_large = true;
        }
    }

    /// A bare LF at the current position: counted, and replaced by CRLF when normalising.
    fn bare_lf(&mut self, out: &mut Vec<u8>) {
        self.outcome.bare_lf += 1;
        match self.outcome.policy {
            BareLineEnding::Normalize => self.put(out, b"\r\n"),
            BareLineEnding::Reject => self.put(out, b"\n"),
        }
    }

    /// A bare CR was emitted just before: complete it to CRLF when normalising.
    fn bare_cr_emitted(&mut self, out: &mut Vec<u8>) {
        self.outcome.bare_cr += 1;
        if self.outcome.policy == BareLineEnding::Normalize {
            self.put(out, b"\n");
        }
    }

    /// Decodes `input`, appending message bytes to `out`. After `Done`, further calls
    /// consume nothing.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataProgress {
        if self.state == DecodeState::Done {
            return DataProgress::Done { consumed: 0 };
        }
        let mut i = 0;
        // Start of the run of input bytes not yet copied to `out`.
        let mut run = 0;
        while i < input.len() {
            match self.state {
                DecodeState::Mid => match memchr3(b'\r', b'\n', 0, &input[i..]) {
                    None => i = input.len(),
                    Some(off) => {
                        let p = i + off;
                        if input[p] == 0 {
                            self.outcome.nul += 1;
                            if self.outcome.policy == BareLineEnding::Normalize {
                                self.put(out, &input[run..p]);
                                run = p + 1;
                            }
                            i = p + 1;
                        } else if input[p] == b'\n' {
                            self.put(out, &input[run..p]);
                            self.bare_lf(out);
                            run = p + 1;
                            i = p + 1;
                        } else if input.get(p + 1) == Some(&b'\n') {
                            // CRLF inside the buffer: the common case, checked without a
                            // state change while the next line does not start with a dot.
                            match input.get(p + 2) {
                                Some(&b'.') | None => {
                                    self.state = DecodeState::LineStart;
                                }
                                Some(_) => {}
                            }
                            i = p + 2;
                        } else {
                            self.state = DecodeState::Cr;
                            i = p + 1;
                        }
                    }
                },
                DecodeState::Cr => {
                    if input[i] == b'\n' {
                        self.state = DecodeState::LineStart;
                        i += 1;
                    } else {
                        self.put(out, &input[run..i]);
                        run = i;
                        self.bare_cr_emitted(out);
                        self.state = DecodeState::Mid;
                    }
                }
                DecodeState::LineStart => {
                    if input[i] == b'.' {
                        self.put(out, &input[run..i]);
                        i += 1;
                        run = i;
                        self.state = DecodeState::Dot;
                    } else {
                        self.state = DecodeState::Mid;
                    }
                }
                DecodeState::Dot => match input[i] {
                    b'\r' => {
                        i += 1;
                        run = i;
                        self.state = DecodeState::DotCr;
                    }
                    b'\n' => {
                        // `.` then a bare LF: the dot is content, the LF is bare.
                        self.put(out, b".");
                        self.bare_lf(out);
                        i += 1;
                        run = i;
                        self.state = DecodeState::Mid;
                    }
                    _ => {
                        // A stuffed dot: dropped; the byte after it starts the run.
                        self.state = DecodeState::Mid;
                    }
                },
                DecodeState::DotCr => {
                    if input[i] == b'\n' {
                        self.state = DecodeState::Done;
                        return DataProgress::Done { consumed: i + 1 };
                    }
                    // `.` CR and something else: the dot is content and the CR is bare.
                    self.put(out, b".\r");
                    self.bare_cr_emitted(out);
                    run = i;
                    self.state = DecodeState::Mid;
                }
                DecodeState::Done => unreachable!("checked before the loop"),
            }
        }
        self.put(out, &input[run..]);
        DataProgress::NeedMore
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EncodeState {
    LineStart,
    Mid,
    /// A CR was written; an LF must follow on the wire.
    Cr,
}

/// Client-side DATA encoder: CRLF normalisation and dot-stuffing, then `.CRLF`. For BDAT
/// ([`DataEncoder::for_chunks`]) the same normalisation without the stuffing and the
/// terminator: a message sent in chunks reads the same as one sent in DATA.
#[derive(Clone, Debug)]
pub struct DataEncoder {
    state: EncodeState,
    /// Dot-stuffing and the `.CRLF` terminator (DATA); off for BDAT chunks.
    stuff: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder {
            state: EncodeState::LineStart,
            stuff: true,
        }
    }
}

impl DataEncoder {
    pub fn new() -> DataEncoder {
        DataEncoder::default()
    }

    /// For BDAT content: line ends made CRLF and NUL left out, no dot-stuffing, and
    /// [`DataEncoder::finish`] only completes the last line.
    pub fn for_chunks() -> DataEncoder {
        DataEncoder {
            state: EncodeState::LineStart,
            stuff: false,
        }
    }

    /// Encodes a chunk of message content, appending wire bytes to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64);
        let mut i = 0;
        let mut run = 0;
        while i < input.len() {
            match self.state {
                _ if input[i] == 0 => {
                    // Left out, the state unchanged: a line start stays one.
                    out.extend_from_slice(&input[run..i]);
                    i += 1;
                    run = i;
                }
                EncodeState::LineStart => {
                    if input[i] == b'.' && self.stuff {
                        out.extend_from_slice(&input[run..i]);
                        out.push(b'.');
                        run = i;
                    }
                    self.state = EncodeState::Mid;
                }
                EncodeState::Mid => match memchr3(b'\r', b'\n', 0, &input[i..]) {
                    None => i = input.len(),
                    Some(off) => {
                        let p = i + off;
                        if input[p] == 0 {
                            i = p;
                        } else if input[p] == b'\n' {
                            out.extend_from_slice(&input[run..p]);
                            out.extend_from_slice(b"\r\n");
                            run = p + 1;
                            i = p + 1;
                            self.state = EncodeState::LineStart;
                        } else if input.get(p + 1) == Some(&b'\n') {
                            i = p + 2;
                            // A NUL may hide a dot that starts the line: decided at LineStart.
                            if input.get(p + 2).is_none_or(|&b| b == b'.' || b == 0) {
                                self.state = EncodeState::LineStart;
                            }
                        } else {
                            i = p + 1;
                            self.state = EncodeState::Cr;
                        }
                    }
                },
                EncodeState::Cr => {
                    if input[i] == b'\n' {
                        i += 1;
                    } else {
                        // A bare CR: complete it to CRLF.
                        out.extend_from_slice(&input[run..i]);
                        out.push(b'\n');
                        run = i;
                    }
                    self.state = EncodeState::LineStart;
                }
            }
        }
        out.extend_from_slice(&input[run..]);
    }

    /// Ends the message: a CRLF if the content did not end with one, then `.CRLF` (not for
    /// chunks).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            EncodeState::LineStart => {}
            EncodeState::Mid => out.extend_from_slice(b"\r\n"),
            EncodeState::Cr => out.push(b'\n'),
        }
        if self.stuff {
            out.extend_from_slice(b".\r\n");
        }
        self.state = EncodeState::LineStart;
    }

    /// Encodes a whole message in one call.
    pub fn encode_all(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 16);
        let mut enc = DataEncoder::new();
        enc.encode(body, &mut out);
        enc.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], policy: BareLineEnding) -> (Vec<u8>, DataProgress, DataOutcome) {
        let mut d = DataDecoder::new(u64::MAX, policy);
        let mut out = Vec::new();
        let p = d.decode(input, &mut out);
        (out, p, d.outcome())
    }

    #[test]
    fn unstuffs_and_stops_at_terminator() {
        let (out, p, _) = decode_all(
            b"..hidden\r\n..\r\n....\r\n.\r\nMAIL",
            BareLineEnding::Reject,
        );
        assert_eq!(out, b".hidden\r\n.\r\n...\r\n");
        assert_eq!(p, DataProgress::Done { consumed: 23 });
    }

    #[test]
    fn encoder_stuffs_and_normalises() {
        assert_eq!(
            DataEncoder::encode_all(b".a\nb\r.c"),
            b"..a\r\nb\r\n..c\r\n.\r\n"
        );
        assert_eq!(DataEncoder::encode_all(b""), b".\r\n");
        assert_eq!(DataEncoder::encode_all(b"x\r\n"), b"x\r\n.\r\n");
    }

    #[test]
    fn encoder_handles_cr_split_from_lf() {
        let mut out = Vec::new();
        let mut e = DataEncoder::new();
        e.encode(b"a\r", &mut out);
        e.encode(b"\n.b", &mut out);
        e.finish(&mut out);
        assert_eq!(out, b"a\r\n..b\r\n.\r\n");
    }

    #[test]
    fn size_limit_stops_output_but_not_reading() {
        let mut d = DataDecoder::new(4, BareLineEnding::Reject);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"abcdef\r\n", &mut out), DataProgress::NeedMore);
        assert_eq!(
            d.decode(b".\r\n", &mut out),
            DataProgress::Done { consumed: 3 }
        );
        assert!(d.outcome().too_large);
        assert_eq!(d.outcome().size, 8);
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn chunk_scans_count_bare_line_ends_across_chunks() {
        let scan = |chunks: &[&[u8]]| {
            let mut s = ChunkScan::default();
            for c in chunks {
                s.feed(c);
            }
            s.finish();
            (s.bare_cr, s.bare_lf, s.nul)
        };
        assert_eq!(scan(&[b"a\r\nb\r\n"]), (0, 0, 0));
        assert_eq!(
            scan(&[b"a\r", b"\nb"]),
            (0, 0, 0),
            "CRLF split over two chunks"
        );
        assert_eq!(
            scan(&[b"a\r", b"", b"\nb"]),
            (0, 0, 0),
            "an empty chunk between"
        );
        assert_eq!(scan(&[b"a\nb\r\n.\n"]), (0, 2, 0));
        assert_eq!(
            scan(&[b"a\rb", b"c\r"]),
            (2, 0, 0),
            "a CR at the very end is bare"
        );
        assert_eq!(scan(&[b"a\r", b"b"]), (1, 0, 0));
        assert_eq!(scan(&[b"\x00.\r\n"]), (0, 0, 1));
        assert_eq!(scan(&[b"\r\r\n\n"]), (1, 1, 0));
    }

    #[test]
    fn chunk_encoding_normalises_without_stuffing() {
        let mut e = DataEncoder::for_chunks();
        let mut out = Vec::new();
        e.encode(b".a\nb\r", &mut out);
        e.encode(b"c\x00.d", &mut out);
        e.finish(&mut out);
        assert_eq!(out, b".a\r\nb\r\nc.d\r\n");
        let mut out = Vec::new();
        let mut e = DataEncoder::for_chunks();
        e.finish(&mut out);
        assert!(out.is_empty(), "no terminator for an empty chunked message");
    }
}
