//! SASL for SMTP AUTH (RFC 4954): mechanism names, the PLAIN and LOGIN messages, continuation
//! lines, and a byte type whose `Debug` never shows a secret.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The LOGIN mechanism's conventional prompts: base64 of `Username:` and `Password:`.
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// RFC 4954 4: a server should accept SASL responses of at least 12288 octets.
pub const MAX_AUTH_LINE: usize = 12288 + 2;

/// A SASL mechanism name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
    XOAuth2,
    CramMd5,
    /// Any other name, upper-cased.
    Other(String),
}

impl Mechanism {
    /// Names are case-insensitive (RFC 4422 3.1).
    pub fn parse(name: &str) -> Mechanism {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Mechanism::Plain,
            "LOGIN" => Mechanism::Login,
            "XOAUTH2" => Mechanism::XOAuth2,
            "CRAM-MD5" => Mechanism::CramMd5,
            other => Mechanism::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::Other(s) => s,
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decoded SASL bytes. `Debug` prints only the length, so secrets stay out of logs.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SaslData(pub Vec<u8>);

impl fmt::Debug for SaslData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaslData(<{} bytes redacted>)", self.0.len())
    }
}

impl SaslData {
    /// Decodes base64 as RFC 4954 sends it; `=` alone means an empty response.
    pub fn decode_base64(text: &str) -> Option<SaslData> {
        if text == "=" {
            return Some(SaslData(Vec::new()));
        }
        STANDARD.decode(text).ok().map(SaslData)
    }

    /// The base64 wire form; an empty response is `=` (RFC 4954 4).
    pub fn encode_base64(&self) -> String {
        if self.0.is_empty() {
            "=".to_string()
        } else {
            STANDARD.encode(&self.0)
        }
    }
}

/// A client line sent in answer to a `334` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthResponse {
    /// `*`: the client gives up (answered with 501, RFC 4954 4).
    Cancel,
    Data(SaslData),
}

/// Base64 that does not decode: `501 5.5.2` (RFC 4954 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadBase64;

impl fmt::Display for BadBase64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot decode base64")
    }
}

impl std::error::Error for BadBase64 {}

impl AuthResponse {
    /// Parses a continuation line (CRLF removed). An empty line is an empty response.
    pub fn parse(line: &[u8]) -> Result<AuthResponse, BadBase64> {
        match line {
            b"*" => Ok(AuthResponse::Cancel),
            b"" => Ok(AuthResponse::Data(SaslData::default())),
            _ => {
                let text = std::str::from_utf8(line).map_err(|_| BadBase64)?;
                STANDARD
                    .decode(text)
                    .map(|d| AuthResponse::Data(SaslData(d)))
                    .map_err(|_| BadBase64)
            }
        }
    }

    /// The wire form with CRLF.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            AuthResponse::Cancel => out.extend_from_slice(b"*"),
            AuthResponse::Data(d) if d.0.is_empty() => {}
            AuthResponse::Data(d) => out.extend_from_slice(STANDARD.encode(&d.0).as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// What a client proved it knows: PLAIN's three fields, or LOGIN's two.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity to act as (PLAIN's authzid); empty means the same as `username`.
    pub authzid: String,
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A PLAIN message that is not `authzid NUL authcid NUL passwd` in UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedPlain;

impl Credentials {
    pub fn new(username: impl Into<String>, secret: impl Into<String>) -> Credentials {
        Credentials {
            authzid: String::new(),
            username: username.into(),
            secret: secret.into(),
        }
    }

    /// Decodes a PLAIN message, RFC 4616 2.
    pub fn from_plain(msg: &[u8]) -> Result<Credentials, MalformedPlain> {
        let text = std::str::from_utf8(msg).map_err(|_| MalformedPlain)?;
        let mut parts = text.split('\0');
        let (Some(authzid), Some(username), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(MalformedPlain);
        };
        if username.is_empty() || secret.is_empty() {
            return Err(MalformedPlain);
        }
        Ok(Credentials {
            authzid: authzid.to_string(),
            username: username.to_string(),
            secret: secret.to_string(),
        })
    }

    /// Decodes an XOAUTH2 initial response: `user=U ^A auth=Bearer T ^A ^A` (Google's SASL
    /// XOAUTH2 profile). The token goes in `secret`.
    pub fn from_xoauth2(msg: &[u8]) -> Result<Credentials, MalformedPlain> {
        let text = std::str::from_utf8(msg).map_err(|_| MalformedPlain)?;
        let (mut user, mut token) = (None, None);
        for part in text.split('\x01').filter(|p| !p.is_empty()) {
            if let Some(u) = part.strip_prefix("user=") {
                user = Some(u);
            } else if let Some(a) = part.strip_prefix("auth=") {
                let (scheme, t) = a.split_once(' ').ok_or(MalformedPlain)?;
                if !scheme.eq_ignore_ascii_case("Bearer") {
                    return Err(MalformedPlain);
                }
                token = Some(t.trim());
            }
        }
        match (user, token) {
            (Some(u), Some(t)) if !u.is_empty() && !t.is_empty() => Ok(Credentials::new(u, t)),
            _ => Err(MalformedPlain),
        }
    }

    /// The PLAIN message for these credentials.
    pub fn to_plain(&self) -> SaslData {
        SaslData(format!("{}\0{}\0{}", self.authzid, self.username, self.secret).into_bytes())
    }

    /// Whether the client asks to act as someone other than itself (RFC 4616 proxy
    /// authorization), which a relay refuses unless it was configured to allow it.
    pub fn is_proxy(&self) -> bool {
        !self.authzid.is_empty() && self.authzid != self.username
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_round_trip_and_malformed() {
        let c = Credentials::new("me@163.com", "code");
        assert_eq!(Credentials::from_plain(&c.to_plain().0), Ok(c));
        assert_eq!(Credentials::from_plain(b""), Err(MalformedPlain));
        assert_eq!(Credentials::from_plain(b"a\0b"), Err(MalformedPlain));
        assert_eq!(Credentials::from_plain(b"a\0b\0c\0d"), Err(MalformedPlain));
    }

    #[test]
    fn xoauth2_messages() {
        let ok = b"user=alice@163.com\x01auth=Bearer ya29.token\x01\x01";
        assert_eq!(
            Credentials::from_xoauth2(ok),
            Ok(Credentials::new("alice@163.com", "ya29.token"))
        );
        // The scheme's case does not matter; the order of the parts does not either.
        assert_eq!(
            Credentials::from_xoauth2(b"auth=bearer t\x01user=u\x01\x01"),
            Ok(Credentials::new("u", "t"))
        );
        for bad in [
            &b""[..],
            b"user=u\x01\x01",
            b"auth=Bearer t\x01\x01",
            b"user=\x01auth=Bearer t\x01\x01",
            b"user=u\x01auth=Basic dTpw\x01\x01",
            b"user=u\x01auth=Bearer \x01\x01",
            b"user=u\xff\x01auth=Bearer t\x01\x01",
        ] {
            assert_eq!(
                Credentials::from_xoauth2(bad),
                Err(MalformedPlain),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Credentials::new("me", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", c.to_plain()).contains("hunter2"));
    }

    #[test]
    fn continuation_lines() {
        assert_eq!(AuthResponse::parse(b"*"), Ok(AuthResponse::Cancel));
        assert_eq!(AuthResponse::parse(b"!!!notbase64"), Err(BadBase64));
        assert_eq!(
            AuthResponse::parse(b"bWU="),
            Ok(AuthResponse::Data(SaslData(b"me".to_vec())))
        );
    }
}
