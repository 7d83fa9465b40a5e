//! STARTTLS and AUTH (RFC 3207, RFC 4954): the upgrade, and the PLAIN, LOGIN and XOAUTH2
//! exchanges with their failures counted.

use super::*;

impl ServerSession {
    pub(super) fn starttls(&mut self) -> Step {
        if self.transport == Transport::Tls {
            return self.sequence_error("TLS is already active");
        }
        if !self.config.starttls {
            return self.error_kind(ReplyKind::StartTlsUnavailable);
        }
        if self.in_transaction() {
            return self.sequence_error("STARTTLS inside a mail transaction");
        }
        self.phase = Phase::TlsHandshake;
        Step::StartTls(self.reply(ReplyKind::StartTlsReady))
    }

    /// The TLS handshake finished: everything known about the client is forgotten (RFC 3207
    /// 4.2), so it must greet again.
    pub fn tls_established(&mut self) {
        self.transport = Transport::Tls;
        self.phase = Phase::Command;
        self.helo = None;
        self.esmtp = false;
        self.authenticated = None;
        self.reset_transaction();
    }

    pub(super) fn auth(&mut self, mechanism: Mechanism, initial: Option<SaslData>) -> Step {
        if self.helo.is_none() || !(self.esmtp || self.config.auth_after_helo) {
            return self.sequence_error("send EHLO first");
        }
        if self.authenticated.is_some() {
            return self.sequence_error("already authenticated");
        }
        if self.in_transaction() {
            return self.sequence_error("AUTH not allowed during a mail transaction");
        }
        if self.config.auth_mechanisms.is_empty() {
            return self.error_kind(ReplyKind::AuthUnavailable);
        }
        if !self.auth_offered() {
            return self.error_kind(ReplyKind::AuthEncryptionRequired);
        }
        if !self.config.auth_mechanisms.contains(&mechanism) {
            return self.error_kind(ReplyKind::AuthMechanismUnknown);
        }
        match (mechanism, initial) {
            (Mechanism::Plain, Some(ir)) => self.plain(&ir.0),
            (Mechanism::Plain, None) => {
                self.phase = Phase::AuthPlain;
                Step::Reply(self.reply(ReplyKind::AuthPlainPrompt))
            }
            (Mechanism::XOAuth2, Some(ir)) => self.xoauth2(&ir.0),
            (Mechanism::XOAuth2, None) => {
                self.phase = Phase::AuthXoauth2;
                Step::Reply(self.reply(ReplyKind::AuthPlainPrompt))
            }
            (Mechanism::Login, Some(user)) => self.login_user(user),
            (Mechanism::Login, None) => {
                self.phase = Phase::AuthLoginUser;
                Step::Reply(self.reply(ReplyKind::AuthUsernamePrompt))
            }
            _ => self.error_kind(ReplyKind::AuthMechanismUnknown),
        }
    }

    pub(super) fn plain(&mut self, msg: &[u8]) -> Step {
        match Credentials::from_plain(msg) {
            Err(_) => self.error_kind(ReplyKind::AuthMalformed),
            Ok(c) if c.is_proxy() => {
                self.auth_failures += 1;
                let reply = self.reply(ReplyKind::AuthProxyRefused);
                self.auth_failed(reply)
            }
            Ok(c) => {
                self.phase = Phase::Pending(Box::new(Pending::Auth {
                    username: c.username.clone(),
                }));
                Step::Decide(Decision::Authenticate(c))
            }
        }
    }

    /// XOAUTH2 (Google's SASL profile, also offered by 163): the user and a bearer token, which
    /// the decision judges as it would a password.
    pub(super) fn xoauth2(&mut self, msg: &[u8]) -> Step {
        match Credentials::from_xoauth2(msg) {
            Err(_) => self.error_kind(ReplyKind::AuthMalformed),
            Ok(c) => {
                self.phase = Phase::Pending(Box::new(Pending::Auth {
                    username: c.username.clone(),
                }));
                Step::Decide(Decision::Authenticate(c))
            }
        }
    }

    pub(super) fn login_user(&mut self, user: SaslData) -> Step {
        match String::from_utf8(user.0) {
            Ok(username) if !username.is_empty() => {
                self.phase = Phase::AuthLoginPass { username };
                Step::Reply(self.reply(ReplyKind::AuthPasswordPrompt))
            }
            _ => self.error_kind(ReplyKind::AuthMalformed),
        }
    }

    pub(super) fn auth_response(&mut self, line: &[u8], stage: AuthStage) -> Step {
        let data = match AuthResponse::parse(line) {
            Ok(AuthResponse::Cancel) => return self.error_kind(ReplyKind::AuthCancelled),
            Ok(AuthResponse::Data(d)) => d,
            Err(_) => return self.error_kind(ReplyKind::AuthBadBase64),
        };
        match stage {
            AuthStage::Plain => self.plain(&data.0),
            AuthStage::XOAuth2 => self.xoauth2(&data.0),
            AuthStage::LoginUser => self.login_user(data),
            AuthStage::LoginPass { username } => match String::from_utf8(data.0) {
                Ok(secret) => {
                    let c = Credentials::new(username.clone(), secret);
                    self.phase = Phase::Pending(Box::new(Pending::Auth { username }));
                    Step::Decide(Decision::Authenticate(c))
                }
                Err(_) => self.error_kind(ReplyKind::AuthMalformed),
            },
        }
    }

    pub(super) fn auth_failed(&mut self, reply: Reply) -> Step {
        if self.auth_failures >= self.config.max_auth_failures {
            self.phase = Phase::Closed;
            return Step::Close(self.reply(ReplyKind::AuthTooManyFailures));
        }
        Step::Reply(reply)
    }
}
