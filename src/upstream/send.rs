//! One whole message over an open upstream session: the one sender of the queue's
//! deliveries, the bounces and the load generator. (The live relay streams a client's
//! message as it arrives, step by step, through its legs instead.)

use std::path::Path;
use std::time::Instant;

use tokio::io::AsyncReadExt;

use super::*;

/// A message's content: pieces in memory, or a file read in 64 KiB pieces.
#[derive(Clone, Copy, Debug)]
pub enum Content<'a> {
    Pieces(&'a [&'a [u8]]),
    /// These octets, then the file's.
    File(&'a [u8], &'a Path),
}

/// One message to send: its envelope and its content (as the client wrote it: the sender
/// dot-stuffs it).
#[derive(Clone, Copy, Debug)]
pub struct Outbound<'a> {
    pub from: &'a ReversePath,
    pub params: &'a MailParams,
    pub rcpts: &'a [(ForwardPath, RcptParams)],
    pub content: Content<'a>,
    /// MAIL and the RCPTs as one group when the upstream offers PIPELINING; else (or when
    /// the upstream does not offer it) one by one, each timed.
    pub pipelining: bool,
}

/// A step of a transaction, as [`Upstream::send_message`] times it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// MAIL and the RCPTs as one pipelined group.
    Envelope,
    Mail,
    Rcpt,
    Data,
    EndOfData,
}

/// What the upstream said to a message, step by step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub mail: Reply,
    /// One per recipient, in order (none when MAIL was refused one by one).
    pub rcpts: Vec<Reply>,
    /// The reply to DATA, when some recipient was accepted.
    pub data: Option<Reply>,
    /// The reply to the end of data, when the content went.
    pub end: Option<Reply>,
    /// The session can take another message: no transaction is left open (a refusal inside
    /// one was followed by an accepted RSET).
    pub reusable: bool,
}

impl Sent {
    /// The upstream's verdict on the message as a whole: the end of data's reply, or the
    /// refusal that stopped it (MAIL, DATA, or the first refused RCPT when none was accepted).
    pub fn verdict(&self) -> &Reply {
        if let Some(r) = self.end.as_ref().or(self.data.as_ref()) {
            return r;
        }
        if !self.mail.is_positive() {
            return &self.mail;
        }
        self.rcpts
            .iter()
            .find(|r| !r.is_positive())
            .unwrap_or(&self.mail)
    }

    /// Whether the upstream took the message (for the recipients it accepted).
    pub fn delivered(&self) -> bool {
        self.end.as_ref().is_some_and(Reply::is_positive)
    }
}

/// A send that failed on the way; the session must not be used again.
#[derive(Debug)]
pub struct SendError {
    pub error: UpstreamError,
    /// The replies to the envelope when the failure came after it (at DATA, in the content
    /// or at the end of data): the recipients accepted may or may not have the message.
    pub envelope: Option<EnvelopeReplies>,
}

impl From<SendError> for UpstreamError {
    fn from(e: SendError) -> UpstreamError {
        e.error
    }
}

/// The size of a piece read from a content file.
const FILE_PIECE: usize = 64 * 1024;

impl Upstream {
    /// Sends `msg`: the envelope, DATA when a recipient was accepted, the content, the end
    /// of data; RSET after a refusal inside the transaction. `timing` hears how long each
    /// step took.
    pub async fn send_message(
        &mut self,
        msg: &Outbound<'_>,
        timing: &mut (dyn FnMut(Step, Duration) + Send),
    ) -> Result<Sent, SendError> {
        let early = |error| SendError {
            error,
            envelope: None,
        };
        let (mail, rcpts) = self.send_envelope(msg, timing).await.map_err(early)?;
        let mut sent = Sent {
            mail,
            rcpts,
            data: None,
            end: None,
            reusable: true,
        };
        if !sent.mail.is_positive() {
            return Ok(sent);
        }
        if !sent.rcpts.iter().any(Reply::is_positive) {
            sent.reusable = self.rset().await.is_ok();
            return Ok(sent);
        }
        let late = |error, sent: &Sent| SendError {
            error,
            envelope: Some(EnvelopeReplies {
                mail: sent.mail.clone(),
                rcpts: sent.rcpts.clone(),
            }),
        };
        let t = Instant::now();
        let data = self.data().await.map_err(|e| late(e, &sent))?;
        timing(Step::Data, t.elapsed());
        let go = data.code == 354;
        sent.data = Some(data);
        if !go {
            sent.reusable = self.rset().await.is_ok();
            return Ok(sent);
        }
        self.send_content(msg.content)
            .await
            .map_err(|e| late(e, &sent))?;
        let t = Instant::now();
        let end = self.end_of_data().await.map_err(|e| late(e, &sent))?;
        timing(Step::EndOfData, t.elapsed());
        sent.end = Some(end);
        Ok(sent)
    }

    /// MAIL and the RCPTs, pipelined or one by one (no RCPT after a refused MAIL then).
    async fn send_envelope(
        &mut self,
        msg: &Outbound<'_>,
        timing: &mut (dyn FnMut(Step, Duration) + Send),
    ) -> Result<(Reply, Vec<Reply>), UpstreamError> {
        let t = Instant::now();
        if msg.pipelining && self.can_pipeline() {
            let env = self.envelope(msg.from, msg.params, msg.rcpts).await?;
            timing(Step::Envelope, t.elapsed());
            return Ok((env.mail, env.rcpts));
        }
        let mail = self.mail(msg.from, msg.params).await?;
        timing(Step::Mail, t.elapsed());
        let mut rcpts = Vec::with_capacity(msg.rcpts.len());
        if mail.is_positive() {
            for (to, p) in msg.rcpts {
                let t = Instant::now();
                rcpts.push(self.rcpt(to, p).await?);
                timing(Step::Rcpt, t.elapsed());
            }
        }
        Ok((mail, rcpts))
    }

    async fn send_content(&mut self, content: Content<'_>) -> Result<(), UpstreamError> {
        match content {
            Content::Pieces(pieces) => {
                for piece in pieces {
                    self.body(piece).await?;
                }
            }
            Content::File(prefix, path) => {
                if !prefix.is_empty() {
                    self.body(prefix).await?;
                }
                let name = self.name().to_string();
                let io = |source| UpstreamError::Io {
                    upstream: name.clone(),
                    phase: Phase::Body,
                    source,
                };
                let mut file = tokio::fs::File::open(path).await.map_err(io)?;
                let mut buf = vec![0u8; FILE_PIECE];
                loop {
                    let n = file.read(&mut buf).await.map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    self.body(&buf[..n]).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16) -> Reply {
        Reply::plain(code, "x")
    }

    fn sent(mail: u16, rcpts: &[u16], data: Option<u16>, end: Option<u16>) -> Sent {
        Sent {
            mail: r(mail),
            rcpts: rcpts.iter().map(|&c| r(c)).collect(),
            data: data.map(r),
            end: end.map(r),
            reusable: true,
        }
    }

    #[test]
    fn the_verdict_is_the_step_that_decided() {
        let table = [
            (sent(250, &[250, 550], Some(354), Some(250)), 250, true),
            (sent(250, &[250], Some(354), Some(554)), 554, false),
            (sent(250, &[250], Some(451), None), 451, false),
            (sent(553, &[], None, None), 553, false),
            // Pipelined: the RCPTs after a refused MAIL were refused for it; MAIL says why.
            (sent(553, &[503, 503], None, None), 553, false),
            // No recipient accepted: the first refusal.
            (sent(250, &[450, 550], None, None), 450, false),
        ];
        for (s, code, delivered) in table {
            assert_eq!(s.verdict().code, code, "{s:?}");
            assert_eq!(s.delivered(), delivered, "{s:?}");
        }
    }
}
