//! MAIL and RCPT: their sequencing, parameters and limits, then the driver's decision.

use super::*;

impl ServerSession {
    pub(super) fn mail(&mut self, from: ReversePath, mut params: MailParams) -> Step {
        if self.helo.is_none() {
            return self.sequence_error("send HELO/EHLO first");
        }
        if self.in_transaction() {
            return self.sequence_error("nested MAIL command");
        }
        if self.config.auth_required && self.authenticated.is_none() {
            return self.error_kind(ReplyKind::AuthRequired);
        }
        if let Some(reply) = self.check_mail_params(&from, &params) {
            return self.error(reply);
        }
        params.auth = None;
        self.phase = Phase::Pending(Box::new(Pending::Mail {
            from: from.clone(),
            params: params.clone(),
        }));
        Step::Decide(Decision::Mail { from, params })
    }

    pub(super) fn unsupported(&self, what: &str) -> Reply {
        self.reply_text(
            ReplyKind::ParameterUnsupported,
            format!("{what} parameter not supported"),
        )
    }

    pub(super) fn check_mail_params(&self, from: &ReversePath, p: &MailParams) -> Option<Reply> {
        let has_params = p != &MailParams::default();
        if has_params && !self.esmtp {
            return Some(self.unsupported("MAIL (after HELO)"));
        }
        if let Some(u) = p.unknown.first() {
            return Some(self.unsupported(&u.keyword));
        }
        if p.smtputf8 && !self.config.smtputf8 {
            return Some(self.unsupported("SMTPUTF8"));
        }
        if p.body == Some(Body::EightBitMime) && !self.config.eight_bit_mime {
            return Some(self.unsupported("BODY=8BITMIME"));
        }
        if p.body == Some(Body::BinaryMime) && !(self.config.chunking && self.config.binarymime) {
            return Some(self.unsupported("BODY=BINARYMIME"));
        }
        if (p.ret.is_some() || p.envid.is_some()) && !self.config.dsn {
            return Some(self.unsupported("RET/ENVID"));
        }
        if p.size.is_some_and(|s| s > self.config.max_message_size) {
            return Some(self.reply(ReplyKind::SizeExceeded));
        }
        if !from.is_ascii() && !p.smtputf8 {
            return Some(self.reply(ReplyKind::NonAsciiSender));
        }
        None
    }

    pub(super) fn rcpt(&mut self, to: ForwardPath, params: RcptParams) -> Step {
        if !self.in_transaction() {
            return self.sequence_error("need MAIL before RCPT");
        }
        self.rcpt_commands += 1;
        if self.rcpt_commands > self.config.max_rcpt_commands {
            // Not an error: recipients accepted before stay valid and DATA proceeds
            // (smtp-edge-cases 45, 81).
            return Step::Reply(self.reply(ReplyKind::TooManyRcptCommands));
        }
        if let Some(u) = params.unknown.first() {
            let reply = self.unsupported(&u.keyword);
            return self.error(reply);
        }
        if (params.notify.is_some() || params.orcpt.is_some()) && !self.config.dsn {
            let reply = self.unsupported("NOTIFY/ORCPT");
            return self.error(reply);
        }
        if !to.is_ascii() && !self.envelope().mail_params.smtputf8 {
            return self.error_kind(ReplyKind::NonAsciiRecipient);
        }
        if self
            .envelope()
            .rcpts
            .iter()
            .any(|(r, _)| r.same_target(&to))
        {
            // Delivered once (smtp-edge-cases 44): accepted without asking again.
            return Step::Reply(self.reply(ReplyKind::RcptOk));
        }
        if self.envelope().rcpts.len() >= self.config.max_recipients {
            return Step::Reply(self.reply(ReplyKind::TooManyRecipients));
        }
        self.phase = Phase::Pending(Box::new(Pending::Rcpt {
            to: to.clone(),
            params: params.clone(),
        }));
        Step::Decide(Decision::Rcpt { to, params })
    }
}
