//! ESMTP parameters of MAIL and RCPT: SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH, NOTIFY, ORCPT,
//! and unknown ones kept so that the session can answer 555 (RFC 5321 4.1.1.11).

use std::fmt;

/// A malformed parameter: always `501 5.5.4` (smtp-edge-cases 38, 40, 41, 42, 43).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParamError {
    /// Not `keyword[=value]` with an ESMTP keyword.
    Syntax(String),
    /// The same keyword twice in one command.
    Duplicate(String),
    /// A known keyword with a value it does not take.
    BadValue {
        keyword: &'static str,
        reason: &'static str,
    },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Syntax(t) => write!(f, "malformed parameter {t:?}"),
            ParamError::Duplicate(k) => write!(f, "duplicate parameter {k}"),
            ParamError::BadValue { keyword, reason } => write!(f, "bad {keyword} value: {reason}"),
        }
    }
}

impl std::error::Error for ParamError {}

/// BODY=, RFC 6152 / RFC 3030.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

impl Body {
    pub fn as_str(self) -> &'static str {
        match self {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            Body::BinaryMime => "BINARYMIME",
        }
    }
}

/// RET=, RFC 3461 4.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    Full,
    Hdrs,
}

/// NOTIFY=, RFC 3461 4.1: NEVER, or a non-empty set of events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Notify {
    Never,
    On {
        success: bool,
        failure: bool,
        delay: bool,
    },
}

/// ORCPT=addr-type;xtext, RFC 3461 4.2 (the xtext is kept encoded, as received).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Orcpt {
    pub addr_type: String,
    pub addr: String,
}

/// A parameter this crate does not know, kept for the 555 reply and for pass-through.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    pub keyword: String,
    pub value: Option<String>,
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}", self.keyword, v),
            None => f.write_str(&self.keyword),
        }
    }
}

/// Parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MailParams {
    /// SIZE=, RFC 1870: the client's estimate of the message size.
    pub size: Option<u64>,
    pub body: Option<Body>,
    /// SMTPUTF8, RFC 6531: the transaction may carry UTF-8 addresses and headers.
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// ENVID=, RFC 3461 (xtext, as received).
    pub envid: Option<String>,
    /// AUTH=, RFC 4954 5 (xtext or `<>`, as received). Not forwarded by a relay as-is.
    pub auth: Option<String>,
    pub unknown: Vec<Param>,
}

/// Parameters of RCPT TO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RcptParams {
    pub notify: Option<Notify>,
    pub orcpt: Option<Orcpt>,
    pub unknown: Vec<Param>,
}

/// Splits `KEY=VALUE KEY2` into checked (keyword, value) pairs and rejects duplicates.
fn tokens(text: &str) -> Result<Vec<(&str, Option<&str>)>, ParamError> {
    let mut out: Vec<(&str, Option<&str>)> = Vec::new();
    for token in text.split([' ', '\t']).filter(|t| !t.is_empty()) {
        let (keyword, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 under RFC 6531.
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.chars()
                    .all(|c| !c.is_ascii() || (c.is_ascii_graphic() && c != '='))
        });
        if !keyword_ok || !value_ok {
            if let (Some(""), Some(k)) = (value, known_keyword(keyword)) {
                return Err(ParamError::BadValue {
                    keyword: k,
                    reason: "empty value",
                });
            }
            return Err(ParamError::Syntax(token.to_string()));
        }
        if out.iter().any(|(k, _)| k.eq_ignore_ascii_case(keyword)) {
            return Err(ParamError::Duplicate(keyword.to_ascii_uppercase()));
        }
        out.push((keyword, value));
    }
    Ok(out)
}

fn known_keyword(k: &str) -> Option<&'static str> {
    [
        "SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "NOTIFY", "ORCPT",
    ]
    .into_iter()
    .find(|known| known.eq_ignore_ascii_case(k))
}

/// RFC 3461 4: xtext = *( xchar / hexchar ); hexchar = "+" 2(upper-case HEX).
fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if i + 2 >= b.len() || !(hex(b[i + 1]) && hex(b[i + 2])) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            c if (33..=126).contains(&c) => i += 1,
            _ => return false,
        }
    }
    true
}

fn need_value<'a>(keyword: &'static str, v: Option<&'a str>) -> Result<&'a str, ParamError> {
    v.ok_or(ParamError::BadValue {
        keyword,
        reason: "a value is required",
    })
}

fn unknown(k: &str, v: Option<&str>) -> Param {
    Param {
        keyword: k.to_string(),
        value: v.map(str::to_string),
    }
}

impl MailParams {
    /// Parses the text after the reverse-path.
    pub fn parse(text: &str) -> Result<MailParams, ParamError> {
        let mut p = MailParams::default();
        for (k, v) in tokens(text)? {
            match known_keyword(k) {
                Some("SIZE") => {
                    let v = need_value("SIZE", v)?;
                    // size-value ::= 1*20DIGIT (RFC 1870); parsing to u64 bounds it further.
                    if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(ParamError::BadValue {
                            keyword: "SIZE",
                            reason: "not a number of 1 to 20 digits",
                        });
                    }
                    p.size = Some(v.parse().map_err(|_| ParamError::BadValue {
                        keyword: "SIZE",
                        reason: "too large",
                    })?);
                }
                Some("BODY") => {
                    let v = need_value("BODY", v)?;
                    p.body = Some(match v.to_ascii_uppercase().as_str() {
                        "7BIT" => Body::SevenBit,
                        "8BITMIME" => Body::EightBitMime,
                        "BINARYMIME" => Body::BinaryMime,
                        _ => {
                            return Err(ParamError::BadValue {
                                keyword: "BODY",
                                reason: "expected 7BIT, 8BITMIME or BINARYMIME",
                            });
                        }
                    });
                }
                Some("SMTPUTF8") => {
                    if v.is_some() {
                        return Err(ParamError::BadValue {
                            keyword: "SMTPUTF8",
                            reason: "takes no value",
                        });
                    }
                    p.smtputf8 = true;
                }
                Some("RET") => {
                    p.ret = Some(match need_value("RET", v)?.to_ascii_uppercase().as_str() {
                        "FULL" => Ret::Full,
                        "HDRS" => Ret::Hdrs,
                        _ => {
                            return Err(ParamError::BadValue {
                                keyword: "RET",
                                reason: "expected FULL or HDRS",
                            });
                        }
                    });
                }
                Some("ENVID") => {
                    let v = need_value("ENVID", v)?;
                    if v.len() > 100 || !is_xtext(v) {
                        return Err(ParamError::BadValue {
                            keyword: "ENVID",
                            reason: "not xtext of at most 100 characters",
                        });
                    }
                    p.envid = Some(v.to_string());
                }
                Some("AUTH") => {
                    let v = need_value("AUTH", v)?;
                    if v != "<>" && !is_xtext(v) {
                        return Err(ParamError::BadValue {
                            keyword: "AUTH",
                            reason: "not xtext or <>",
                        });
                    }
                    p.auth = Some(v.to_string());
                }
                _ => p.unknown.push(unknown(k, v)),
            }
        }
        Ok(p)
    }
}

/// The wire form, as [`MailParams`]'s `Display` writes it (a leading space, or nothing).
impl std::str::FromStr for MailParams {
    type Err = ParamError;
    fn from_str(s: &str) -> Result<MailParams, ParamError> {
        MailParams::parse(s)
    }
}

impl fmt::Display for MailParams {
    /// The wire form: each parameter preceded by a space (empty when there are none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.size {
            write!(f, " SIZE={s}")?;
        }
        if let Some(b) = self.body {
            write!(f, " BODY={}", b.as_str())?;
        }
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        if let Some(r) = self.ret {
            f.write_str(match r {
                Ret::Full => " RET=FULL",
                Ret::Hdrs => " RET=HDRS",
            })?;
        }
        if let Some(e) = &self.envid {
            write!(f, " ENVID={e}")?;
        }
        if let Some(a) = &self.auth {
            write!(f, " AUTH={a}")?;
        }
        for u in &self.unknown {
            write!(f, " {u}")?;
        }
        Ok(())
    }
}

impl RcptParams {
    /// Parses the text after the forward-path.
    pub fn parse(text: &str) -> Result<RcptParams, ParamError> {
        let mut p = RcptParams::default();
        for (k, v) in tokens(text)? {
            match known_keyword(k) {
                Some("NOTIFY") => {
                    let v = need_value("NOTIFY", v)?;
                    p.notify = Some(parse_notify(v)?);
                }
                Some("ORCPT") => {
                    let v = need_value("ORCPT", v)?;
                    let bad = ParamError::BadValue {
                        keyword: "ORCPT",
                        reason: "expected addr-type;xtext",
                    };
                    let (t, a) = v.split_once(';').ok_or(bad.clone())?;
                    let atom = |s: &str| {
                        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    };
                    if !atom(t) || a.is_empty() || !is_xtext(a) || v.len() > 500 {
                        return Err(bad);
                    }
                    p.orcpt = Some(Orcpt {
                        addr_type: t.to_string(),
                        addr: a.to_string(),
                    });
                }
                _ => p.unknown.push(unknown(k, v)),
            }
        }
        Ok(p)
    }
}

fn parse_notify(v: &str) -> Result<Notify, ParamError> {
    let bad = |reason| ParamError::BadValue {
        keyword: "NOTIFY",
        reason,
    };
    let (mut never, mut success, mut failure, mut delay) = (false, false, false, false);
    for item in v.split(',') {
        let flag = match item.to_ascii_uppercase().as_str() {
            "NEVER" => &mut never,
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            _ => return Err(bad("expected NEVER or SUCCESS,FAILURE,DELAY")),
        };
        if *flag {
            return Err(bad("a value repeated"));
        }
        *flag = true;
    }
    match (never, success || failure || delay) {
        (true, true) => Err(bad("NEVER combined with another value")),
        (true, false) => Ok(Notify::Never),
        (false, _) => Ok(Notify::On {
            success,
            failure,
            delay,
        }),
    }
}

impl fmt::Display for RcptParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.notify {
            Some(Notify::Never) => f.write_str(" NOTIFY=NEVER")?,
            Some(Notify::On {
                success,
                failure,
                delay,
            }) => {
                let items: Vec<&str> =
                    [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                        .into_iter()
                        .filter_map(|(on, name)| on.then_some(name))
                        .collect();
                write!(f, " NOTIFY={}", items.join(","))?;
            }
            None => {}
        }
        if let Some(o) = &self.orcpt {
            write!(f, " ORCPT={};{}", o.addr_type, o.addr)?;
        }
        for u in &self.unknown {
            write!(f, " {u}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext() {
        assert!(is_xtext("a+2Bb@x"));
        assert!(!is_xtext("a+2bb@x"));
        assert!(!is_xtext("a+2"));
        assert!(!is_xtext("a=b"));
    }

    #[test]
    fn notify_on_with_no_events_is_rejected() {
        assert!(parse_notify("").is_err());
        assert!(parse_notify("SUCCESS,SUCCESS").is_err());
    }
}
