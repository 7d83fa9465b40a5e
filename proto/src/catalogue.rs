//! The reply catalogue: every reply a server session generates itself has a [`ReplyKind`], a
//! standard RFC-style default, and may be overridden by a [`ReplyBook`] (this is how the fake
//! upstream speaks 163's exact words while the session keeps the RFC state rules).

use std::collections::BTreeMap;

use crate::reply::Reply;

macro_rules! kinds {
    ($( $(#[$doc:meta])* $kind:ident = $name:literal => $code:literal, $enh:expr, $text:literal; )*) => {
        /// A reply the session machine generates itself. `name()` is the key in persona files.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ReplyKind {
            $( $(#[$doc])* $kind, )*
        }

        impl ReplyKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [ReplyKind] = &[$(ReplyKind::$kind),*];

            /// The snake_case key used in persona files.
            pub fn name(self) -> &'static str {
                match self { $(ReplyKind::$kind => $name,)* }
            }

            /// The kind for a persona-file key.
            pub fn from_name(name: &str) -> Option<ReplyKind> {
                match name { $($name => Some(ReplyKind::$kind),)* _ => None }
            }

            /// The standard reply. Some kinds get a more specific text from the session
            /// (which parameter, which address error); an override replaces it whole.
            pub fn default_reply(self) -> Reply {
                let enhanced: Option<(u8, u16, u16)> = match self { $(ReplyKind::$kind => $enh,)* };
                let (code, text) = match self { $(ReplyKind::$kind => ($code, $text),)* };
                Reply { code, enhanced, lines: vec![text.to_string()] }
            }
        }
    };
}

kinds! {
    /// 220 on connect (the session puts its hostname first).
    Greeting = "greeting" => 220, None, "ESMTP smtp-relay";
    /// The reply to HELO (the session puts its hostname).
    Helo = "helo" => 250, None, "OK";
    /// NOOP and RSET.
    Ok = "ok" => 250, Some((2, 0, 0)), "OK";
    Bye = "bye" => 221, Some((2, 0, 0)), "Bye";
    Vrfy = "vrfy" => 252, Some((2, 1, 5)), "Cannot VRFY user, but will accept message and attempt delivery";
    Expn = "expn" => 502, Some((5, 5, 1)), "EXPN not available";
    Help = "help" => 214, Some((2, 0, 0)), "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH";
    HelpTopic = "help_topic" => 504, Some((5, 5, 4)), "HELP for a command is not available";
    /// A verb the server does not know.
    UnknownCommand = "unknown_command" => 500, Some((5, 5, 2)), "Error: command not recognized";
    /// EHLO or HELO without the client's name (RFC 5321 4.1.1.1).
    HeloMissing = "helo_missing" => 501, Some((5, 5, 4)), "Syntax: EHLO and HELO need a domain or address literal";
    /// Any other refused command line (bad arguments, control bytes, bare CR/LF).
    SyntaxError = "syntax_error" => 501, Some((5, 5, 4)), "Error: syntax error";
    BadSenderSyntax = "bad_sender_syntax" => 501, Some((5, 1, 7)), "Bad sender address syntax";
    BadRecipientSyntax = "bad_recipient_syntax" => 501, Some((5, 1, 3)), "Bad recipient address syntax";
    BadParameter = "bad_parameter" => 501, Some((5, 5, 4)), "Error: malformed parameter";
    LineTooLong = "line_too_long" => 500, Some((5, 5, 2)), "Error: line too long";
    BadSequence = "bad_sequence" => 503, Some((5, 5, 1)), "Error: bad sequence of commands";
    TooManyErrors = "too_many_errors" => 421, Some((4, 7, 0)), "Too many errors, closing connection";
    StartTlsReady = "starttls_ready" => 220, Some((2, 0, 0)), "Ready to start TLS";
    StartTlsUnavailable = "starttls_unavailable" => 502, Some((5, 5, 1)), "STARTTLS not available";
    AuthUnavailable = "auth_unavailable" => 502, Some((5, 5, 1)), "AUTH not available";
    AuthEncryptionRequired = "auth_encryption_required" => 538, Some((5, 7, 11)), "Encryption required for requested authentication mechanism";
    AuthMechanismUnknown = "auth_mechanism_unknown" => 504, Some((5, 5, 4)), "Unrecognized authentication type";
    AuthUsernamePrompt = "auth_username_prompt" => 334, None, "VXNlcm5hbWU6";
    AuthPasswordPrompt = "auth_password_prompt" => 334, None, "UGFzc3dvcmQ6";
    AuthPlainPrompt = "auth_plain_prompt" => 334, None, "";
    AuthSucceeded = "auth_succeeded" => 235, Some((2, 7, 0)), "Authentication successful";
    AuthFailed = "auth_failed" => 535, Some((5, 7, 8)), "Authentication credentials invalid";
    AuthCancelled = "auth_cancelled" => 501, Some((5, 7, 0)), "Authentication cancelled";
    AuthBadBase64 = "auth_bad_base64" => 501, Some((5, 5, 2)), "Error: cannot decode base64 response";
    AuthMalformed = "auth_malformed" => 501, Some((5, 5, 2)), "Malformed authentication response";
    AuthProxyRefused = "auth_proxy_refused" => 535, Some((5, 7, 8)), "Authentication credentials invalid: authorization identity not allowed";
    AuthTooManyFailures = "auth_too_many_failures" => 421, Some((4, 7, 0)), "Too many authentication failures, closing connection";
    AuthLineTooLong = "auth_line_too_long" => 500, Some((5, 5, 6)), "Authentication exchange line is too long";
    AuthRequired = "auth_required" => 530, Some((5, 7, 0)), "Authentication required";
    MailOk = "mail_ok" => 250, Some((2, 1, 0)), "Sender OK";
    RcptOk = "rcpt_ok" => 250, Some((2, 1, 5)), "Recipient OK";
    TooManyRecipients = "too_many_recipients" => 452, Some((4, 5, 3)), "Too many recipients";
    TooManyRcptCommands = "too_many_rcpt_commands" => 452, Some((4, 5, 3)), "Too many RCPT commands in this transaction";
    ParameterUnsupported = "parameter_unsupported" => 555, Some((5, 5, 4)), "Parameter not supported";
    SizeExceeded = "size_exceeded" => 552, Some((5, 3, 4)), "Message size exceeds fixed maximum message size";
    NonAsciiSender = "non_ascii_sender" => 550, Some((5, 6, 7)), "Non-ASCII addresses not permitted for that sender";
    NonAsciiRecipient = "non_ascii_recipient" => 553, Some((5, 6, 7)), "Non-ASCII addresses not permitted for that recipient";
    NoValidRecipients = "no_valid_recipients" => 554, Some((5, 5, 1)), "No valid recipients";
    DataStart = "data_start" => 354, None, "End data with <CR><LF>.<CR><LF>";
    BareLineEnding = "bare_line_ending" => 550, Some((5, 6, 0)), "Message contains bare <CR> or <LF>; lines must end with <CR><LF>";
    NulInData = "nul_in_data" => 550, Some((5, 6, 0)), "Message contains NUL octets, which are not allowed in mail";
    MessageAccepted = "message_accepted" => 250, Some((2, 0, 0)), "Message accepted for delivery";
    ChunkOk = "chunk_ok" => 250, Some((2, 0, 0)), "Chunk received";
    BdatUnavailable = "bdat_unavailable" => 502, Some((5, 5, 1)), "BDAT not available";
    Shutdown = "shutdown" => 421, Some((4, 3, 2)), "Service shutting down";
    Timeout = "timeout" => 421, Some((4, 4, 2)), "Timeout, closing connection";
    LineTooSlow = "line_too_slow" => 421, Some((4, 4, 2)), "Command line not completed in time, closing connection";
    DataTooSlow = "data_too_slow" => 421, Some((4, 4, 2)), "Message data arriving too slowly, closing connection";
    InternalError = "internal_error" => 451, Some((4, 3, 0)), "Internal error";
}

/// Overrides of the catalogue. Empty means the standard replies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyBook {
    overrides: BTreeMap<ReplyKind, Reply>,
}

impl ReplyBook {
    pub fn new() -> ReplyBook {
        ReplyBook::default()
    }

    /// Replaces the reply for `kind`.
    pub fn set(&mut self, kind: ReplyKind, reply: Reply) {
        self.overrides.insert(kind, reply);
    }

    pub fn get(&self, kind: ReplyKind) -> Option<&Reply> {
        self.overrides.get(&kind)
    }

    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for &k in ReplyKind::ALL {
            assert_eq!(ReplyKind::from_name(k.name()), Some(k));
        }
        let mut names: Vec<_> = ReplyKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ReplyKind::ALL.len());
    }

    #[test]
    fn defaults_have_the_class_of_their_enhanced_code() {
        for &k in ReplyKind::ALL {
            let r = k.default_reply();
            if let Some((class, _, _)) = r.enhanced {
                assert_eq!(u16::from(class), r.code / 100, "{k:?}");
            }
        }
    }
}
