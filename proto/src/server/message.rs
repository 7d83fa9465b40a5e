//! DATA and BDAT, the end of the message, and the driver's verdicts on every pending decision.

use super::*;

impl ServerSession {
    pub(super) fn data(&mut self) -> Step {
        if !self.in_transaction() {
            return self.sequence_error("need MAIL before DATA");
        }
        if self.envelope().rcpts.is_empty() {
            // The transaction is over: a client that pipelined its body after this DATA must
            // not see those lines add recipients to it (smtp-edge-cases 79).
            self.reset_transaction();
            return self.error_kind(ReplyKind::NoValidRecipients);
        }
        if self.envelope().mail_params.body == Some(Body::BinaryMime) {
            return self.sequence_error("BODY=BINARYMIME needs BDAT, not DATA");
        }
        self.phase = Phase::Pending(Box::new(Pending::BeginData));
        Step::Decide(Decision::BeginData)
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) -> Step {
        // RFC 3030 2: the chunk is read whatever the verdict, then answered.
        self.chunk_error = if !self.config.chunking {
            Some(self.reply(ReplyKind::BdatUnavailable))
        } else if !self.in_transaction() {
            Some(self.bad_sequence("need MAIL before BDAT"))
        } else if self.envelope().rcpts.is_empty() {
            Some(self.reply(ReplyKind::NoValidRecipients))
        } else {
            self.chunk_error.take()
        };
        self.chunked = self.chunked.saturating_add(size);
        if self.chunk_error.is_none() && self.chunked > self.config.max_message_size {
            self.chunk_error = Some(self.reply(ReplyKind::SizeExceeded));
        }
        // The transaction's first chunk: the driver begins the message (as for DATA, without
        // the 354) before its content comes; its refusal answers the chunk once it is read.
        if self.chunk_error.is_none() && !self.chunks_begun {
            self.chunks_begun = true;
            self.phase = Phase::Pending(Box::new(Pending::BeginChunks { size, last }));
            return Step::Decide(Decision::BeginData);
        }
        self.phase = Phase::Chunk { size, last };
        Step::ReceiveChunk { size, last }
    }

    /// The transaction's content, read so far, may not be passed on (bare line ends or NUL
    /// under the `Reject` policy, found by the driver's [`crate::ChunkScan`]): its last chunk
    /// is answered with `kind` and nothing is delivered.
    pub fn refuse_chunks(&mut self, kind: ReplyKind) {
        if self.chunk_error.is_none() {
            self.chunk_error = Some(self.reply(kind));
        }
    }

    /// Octets announced by this transaction's BDATs so far.
    pub fn chunked(&self) -> u64 {
        self.chunked
    }

    /// Whether a message is coming in BDAT chunks: its transaction's first BDAT was taken
    /// and its last one not yet (a driver's data rate holds between the chunks too).
    pub fn in_chunked_message(&self) -> bool {
        self.chunks_begun || self.chunked > 0
    }

    /// The chunk announced by the last BDAT was read (and kept by the driver unless this
    /// returns a refusal).
    pub fn handle_chunk_end(&mut self) -> Step {
        let Phase::Chunk { last, .. } = std::mem::replace(&mut self.phase, Phase::Command) else {
            return Step::Reply(self.reply(ReplyKind::InternalError));
        };
        if let Some(reply) = self.chunk_error.clone() {
            if last || !self.in_transaction() {
                self.reset_transaction();
            }
            return self.error(reply);
        }
        if !last {
            let text = format!("{} octets received", self.chunked);
            return Step::Reply(self.reply_text(ReplyKind::ChunkOk, text));
        }
        self.envelope_mut().size = self.chunked;
        self.phase = Phase::Pending(Box::new(Pending::Deliver));
        Step::Decide(Decision::Deliver(self.envelope().clone()))
    }

    /// The DATA decoder found the terminator.
    pub fn handle_data_end(&mut self, outcome: DataOutcome) -> Step {
        if !matches!(self.phase, Phase::Data) {
            return Step::Reply(self.reply(ReplyKind::InternalError));
        }
        self.phase = Phase::Command;
        if outcome.too_large {
            self.reset_transaction();
            return Step::Reply(self.reply(ReplyKind::SizeExceeded));
        }
        if outcome.has_forbidden_line_endings() {
            self.reset_transaction();
            return Step::Reply(self.reply(ReplyKind::BareLineEnding));
        }
        if outcome.has_forbidden_nul() {
            self.reset_transaction();
            return Step::Reply(self.reply(ReplyKind::NulInData));
        }
        self.envelope_mut().size = outcome.size;
        self.phase = Phase::Pending(Box::new(Pending::Deliver));
        Step::Decide(Decision::Deliver(self.envelope().clone()))
    }

    /// The driver's answer to the last [`Step::Decide`].
    pub fn decide(&mut self, verdict: Verdict) -> Step {
        let Phase::Pending(pending) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return Step::Reply(self.reply(ReplyKind::InternalError));
        };
        let (accepted, given) = match verdict {
            Verdict::Accept => (true, None),
            Verdict::Reply(r) => (r.is_positive(), Some(r)),
        };
        let reply = |kind| given.clone().unwrap_or_else(|| self.reply(kind));
        match *pending {
            Pending::Auth { username } => {
                if accepted {
                    let r = reply(ReplyKind::AuthSucceeded);
                    self.authenticated = Some(username);
                    Step::Reply(r)
                } else {
                    let r = reply(ReplyKind::AuthFailed);
                    self.auth_failures += 1;
                    self.auth_failed(r)
                }
            }
            Pending::Mail { from, params } => {
                let r = reply(ReplyKind::MailOk);
                if accepted {
                    self.envelope_mut().from = Some(from);
                    self.envelope_mut().mail_params = params;
                }
                Step::Reply(r)
            }
            Pending::Rcpt { to, params } => {
                let r = reply(ReplyKind::RcptOk);
                if accepted {
                    self.envelope_mut().rcpts.push((to, params));
                }
                Step::Reply(r)
            }
            Pending::BeginData => {
                let r = reply(ReplyKind::DataStart);
                if accepted {
                    self.phase = Phase::Data;
                }
                Step::Reply(r)
            }
            Pending::BeginChunks { size, last } => {
                if !accepted {
                    // A refusal always carries the driver's reply.
                    self.chunk_error = Some(reply(ReplyKind::DataStart));
                }
                self.phase = Phase::Chunk { size, last };
                Step::ReceiveChunk { size, last }
            }
            Pending::Deliver => {
                let r = reply(ReplyKind::MessageAccepted);
                self.reset_transaction();
                Step::Reply(r)
            }
        }
    }
}
