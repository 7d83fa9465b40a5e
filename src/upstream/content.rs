//! A message's content over an open upstream session: DATA and its dot-stuffed body, or
//! BDAT chunks (RFC 3030: when the upstream offers CHUNKING and BDAT is configured, and always
//! for `BODY=BINARYMIME`), then the end of data and the upstream's verdict.

use super::*;

/// A message going in BDAT chunks.
#[derive(Debug, Default)]
pub(super) struct Chunks {
    /// Chunks sent before the last.
    sent: u64,
    /// Replies to chunks still owed (pipelined).
    owed: usize,
    /// The first chunk the upstream refused.
    refused: Option<Reply>,
}

impl Upstream {
    /// DATA: `354` means the body may follow; anything else is the upstream's refusal. When
    /// the upstream offers CHUNKING and BDAT is configured, no command goes now: the content
    /// will go in BDAT chunks, and the `354` is this session's own word (the upstream's
    /// verdict comes with the chunks).
    pub async fn data(&mut self) -> Result<Reply, UpstreamError> {
        if self.binary {
            // Binary content goes in BDAT only (the MAIL was not sent to an upstream that
            // does not take it: `refuse_binary`).
            self.chunks = Some(Chunks::default());
            self.note("* the binary content goes in BDAT chunks as it came (BINARYMIME)".into());
            return Ok(Reply::plain(354, "go on in BDAT chunks"));
        }
        if self.bdat.is_some() && self.session.can_chunk() {
            self.encoder = DataEncoder::for_chunks();
            self.chunks = Some(Chunks::default());
            self.note("* the content goes in BDAT chunks (CHUNKING offered)".into());
            return Ok(Reply::plain(354, "go on in BDAT chunks"));
        }
        let out = self.session.data();
        match self
            .command(out, Phase::Data, self.timeouts.data_init)
            .await?
        {
            ClientEvent::Data(r) => {
                self.encoder = DataEncoder::new();
                vet(&self.name, Phase::Data, r)
            }
            other => Err(self.unexpected(other, Phase::Data)),
        }
    }

    /// Sends a piece of message content: CRLF-normalised and dot-stuffed on the way. Small
    /// pieces are gathered (up to `BODY_BATCH` octets) and go out with the next one or with
    /// the end of data: a small message is one write, not one per piece.
    pub async fn body(&mut self, chunk: &[u8]) -> Result<(), UpstreamError> {
        if self.binary {
            self.body_out.extend_from_slice(chunk);
        } else {
            self.encoder.encode(chunk, &mut self.body_out);
        }
        let batch = match self.chunks {
            Some(_) => self.bdat.unwrap_or(BODY_BATCH).max(1),
            None => BODY_BATCH,
        };
        if self.body_out.len() >= batch {
            self.flush_body().await?;
        }
        Ok(())
    }

    /// Writes the content gathered so far (in BDAT, as a chunk that is not the last).
    pub async fn flush_body(&mut self) -> Result<(), UpstreamError> {
        if self.body_out.is_empty() {
            return Ok(());
        }
        if self.chunks.is_some() {
            return self.send_chunk(false).await;
        }
        let out = std::mem::take(&mut self.body_out);
        let r = self
            .write(&out, Phase::Body, self.timeouts.data_block)
            .await;
        self.body_out = out;
        self.body_out.clear();
        r
    }

    /// `BDAT n [LAST]` and the content gathered (two writes: no copy of the chunk). Replies to
    /// the chunks before the last are read at the end when the upstream pipelines, else at
    /// once.
    async fn send_chunk(&mut self, last: bool) -> Result<(), UpstreamError> {
        let n = self.body_out.len();
        let cmd = self
            .session
            .bdat(n as u64, last)
            .map_err(|e| self.protocol(e))?;
        self.out.clear();
        cmd.encode(&mut self.out);
        if self.recording {
            let line = String::from_utf8_lossy(&self.out[..self.out.len() - 2]).into_owned();
            self.transcript.push(format!("C: {line}"));
        }
        let head = std::mem::take(&mut self.out);
        let wrote = self
            .write(&head, Phase::Body, self.timeouts.data_block)
            .await;
        self.out = head;
        wrote?;
        let body = std::mem::take(&mut self.body_out);
        let wrote = self
            .write(&body, Phase::Body, self.timeouts.data_block)
            .await;
        self.body_out = body;
        self.body_out.clear();
        wrote?;
        if last {
            return Ok(());
        }
        if let Some(c) = self.chunks.as_mut() {
            c.sent += 1;
            c.owed += 1;
        }
        if !self.session.can_pipeline() {
            self.chunk_replies().await?;
        }
        Ok(())
    }

    /// Reads the replies owed to chunks before the last; the first refusal is kept.
    pub(super) async fn chunk_replies(&mut self) -> Result<(), UpstreamError> {
        while self.chunks.as_ref().is_some_and(|c| c.owed > 0) {
            let reply = self
                .read_reply(Phase::Body, self.timeouts.data_block)
                .await?;
            let reply = match self
                .session
                .handle_reply(reply)
                .map_err(|e| self.protocol(e))?
            {
                ClientEvent::Chunk(r) => r,
                other => return Err(self.unexpected(other, Phase::Body)),
            };
            if let Some(c) = self.chunks.as_mut() {
                c.owed -= 1;
                if !reply.is_positive() && c.refused.is_none() {
                    c.refused = Some(reply);
                }
            }
        }
        Ok(())
    }

    /// The last chunk (`BDAT n LAST`), then the replies owed, then the final reply: the first
    /// refused chunk's, if one was (the upstream refuses the rest of such a message too).
    async fn end_of_chunks(&mut self) -> Result<Reply, UpstreamError> {
        if !self.binary {
            self.encoder.finish(&mut self.body_out);
        }
        self.send_chunk(true).await?;
        self.note("C: <message data>".into());
        self.chunk_replies().await?;
        let reply = self
            .read_reply(Phase::EndOfData, self.timeouts.data_end)
            .await?;
        self.messages += 1;
        let chunks = self.chunks.take().unwrap_or_default();
        self.encoder = DataEncoder::new();
        let last = match self
            .session
            .handle_reply(reply)
            .map_err(|e| self.protocol(e))?
        {
            ClientEvent::Message(r) => vet(&self.name, Phase::EndOfData, r)?,
            other => return Err(self.unexpected(other, Phase::EndOfData)),
        };
        Ok(match chunks.refused {
            Some(r) if last.is_positive() => r,
            _ => last,
        })
    }

    /// Ends the message (`.CRLF`, in one write with the content still gathered) and returns
    /// the upstream's final reply.
    pub async fn end_of_data(&mut self) -> Result<Reply, UpstreamError> {
        if self.chunks.is_some() {
            return self.end_of_chunks().await;
        }
        self.encoder.finish(&mut self.body_out);
        let out = std::mem::take(&mut self.body_out);
        let written = self
            .write(&out, Phase::Body, self.timeouts.data_block)
            .await;
        self.body_out = out;
        self.body_out.clear();
        written?;
        self.note("C: <message data>".into());
        self.session.data_sent().map_err(|e| self.protocol(e))?;
        let reply = self
            .read_reply(Phase::EndOfData, self.timeouts.data_end)
            .await?;
        self.messages += 1;
        match self
            .session
            .handle_reply(reply)
            .map_err(|e| self.protocol(e))?
        {
            ClientEvent::Message(r) => vet(&self.name, Phase::EndOfData, r),
            other => Err(self.unexpected(other, Phase::EndOfData)),
        }
    }
}
