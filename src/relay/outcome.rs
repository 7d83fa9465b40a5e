//! The reply rule, in one place: what the client hears when its message went to one or
//! several destinations (README, "Several routes"). Every destination took it: its reply, or
//! for several a 250 with each one's words. None did: the refusal, in the words of each. Some
//! did: 250 with each one's words and a line saying who gets the notification of the
//! recipients that failed. Pure: the session gives the verdicts, this says the reply.

use smtp_wire::{Reply, ReversePath, Severity};

/// One destination's verdict on a message: the upstream's name and its reply.
#[derive(Clone, Copy, Debug)]
pub(super) struct Said<'a> {
    pub(super) upstream: &'a str,
    pub(super) reply: &'a Reply,
}

impl Said<'_> {
    /// `<upstream>: <code> <text>`, one line of a combined reply.
    fn line(&self) -> String {
        format!("{}: {}", self.upstream, crate::upstream::said(self.reply))
    }
}

/// How a message ended across its destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Delivered,
    PartlyDelivered,
    Refused,
}

impl Outcome {
    /// As the log says it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::PartlyDelivered => "partly delivered",
            Outcome::Refused => "refused",
        }
    }
}

/// The refusal when no destination takes the message: one's reply verbatim, or for several
/// a reply that keeps each one's words, transient if any of them is (the client then tries
/// again, and the permanent ones will say so again).
pub(super) fn refusal(refused: &[Said]) -> Reply {
    match refused {
        [] => Reply::new(451, (4, 3, 0), "no upstream took the message"),
        [one] => one.reply.clone(),
        many => {
            let lead = many
                .iter()
                .find(|s| s.reply.severity() == Severity::Transient)
                .unwrap_or(&many[0])
                .reply;
            let mut lines = vec![format!(
                "refused by {} upstreams, in their words:",
                many.len()
            )];
            lines.extend(many.iter().map(Said::line));
            Reply {
                code: lead.code,
                enhanced: lead.enhanced,
                lines,
            }
        }
    }
}

/// The client's reply to the end of data from every involved destination's verdict (in
/// route order); `failed` recipients were refused, and their notification goes to `sender`
/// (none for the null sender).
pub(super) fn end_of_data(
    verdicts: &[Said],
    failed: usize,
    sender: Option<&ReversePath>,
) -> (Reply, Outcome) {
    let delivered = verdicts.iter().filter(|s| s.reply.is_positive()).count();
    if delivered == 0 {
        return (refusal(verdicts), Outcome::Refused);
    }
    let ok = |lines: Vec<String>| Reply {
        code: 250,
        enhanced: Some((2, 0, 0)),
        lines,
    };
    if delivered == verdicts.len() {
        let reply = match verdicts {
            [one] => one.reply.clone(),
            many => {
                let mut lines = vec![format!("OK: delivered by {} upstreams:", many.len())];
                lines.extend(many.iter().map(Said::line));
                ok(lines)
            }
        };
        return (reply, Outcome::Delivered);
    }
    let mut lines = vec![format!(
        "OK: delivered by {delivered} of {} upstreams:",
        verdicts.len()
    )];
    lines.extend(verdicts.iter().map(Said::line));
    lines.push(match sender {
        Some(ReversePath::Mailbox(m)) => {
            format!("{failed} recipient(s) failed: a delivery status notification goes to <{m}>")
        }
        _ => format!("{failed} recipient(s) failed: no notification for a null sender"),
    });
    (ok(lines), Outcome::PartlyDelivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16, text: &str) -> Reply {
        Reply::new(code, ((code / 100) as u8, 0, 0), text)
    }

    fn said<'a>(upstream: &'a str, reply: &'a Reply) -> Said<'a> {
        Said { upstream, reply }
    }

    #[test]
    fn one_destination_is_heard_verbatim() {
        let ok = r(250, "Mail OK queued as smtp1");
        let no = r(550, "Invalid recipient");
        assert_eq!(
            end_of_data(&[said("163", &ok)], 0, None),
            (ok.clone(), Outcome::Delivered)
        );
        assert_eq!(
            end_of_data(&[said("163", &no)], 1, None),
            (no.clone(), Outcome::Refused)
        );
    }

    #[test]
    fn every_destination_took_it() {
        let (a, b) = (r(250, "a took it"), r(250, "b took it"));
        let (reply, outcome) = end_of_data(&[said("163", &a), said("qq", &b)], 0, None);
        assert_eq!(outcome, Outcome::Delivered);
        assert_eq!(reply.code, 250);
        assert_eq!(
            reply.lines,
            [
                "OK: delivered by 2 upstreams:",
                "163: 250 2.0.0 a took it",
                "qq: 250 2.0.0 b took it"
            ]
        );
    }

    #[test]
    fn none_took_it_and_a_transient_refusal_leads() {
        let (perm, temp) = (r(554, "spam"), r(451, "busy"));
        let (reply, outcome) = end_of_data(&[said("163", &perm), said("qq", &temp)], 2, None);
        assert_eq!(outcome, Outcome::Refused);
        assert_eq!((reply.code, reply.enhanced), (451, Some((4, 0, 0))));
        assert_eq!(
            reply.lines,
            [
                "refused by 2 upstreams, in their words:",
                "163: 554 5.0.0 spam",
                "qq: 451 4.0.0 busy"
            ]
        );
        // All permanent: the first one's code.
        let other = r(550, "no such user");
        let (reply, _) = end_of_data(&[said("163", &perm), said("qq", &other)], 2, None);
        assert_eq!(reply.code, 554);
        assert_eq!(refusal(&[]).code, 451);
    }

    #[test]
    fn some_took_it_and_the_sender_is_told() {
        let (ok, no) = (r(250, "ok"), r(550, "Invalid recipient"));
        let sender: ReversePath = "<alice@163.com>".parse().expect("path");
        let both = [said("163", &ok), said("qq", &no)];
        let (reply, outcome) = end_of_data(&both, 3, Some(&sender));
        assert_eq!(outcome, Outcome::PartlyDelivered);
        assert_eq!(reply.code, 250);
        assert_eq!(
            reply.lines,
            [
                "OK: delivered by 1 of 2 upstreams:",
                "163: 250 2.0.0 ok",
                "qq: 550 5.0.0 Invalid recipient",
                "3 recipient(s) failed: a delivery status notification goes to <alice@163.com>"
            ]
        );
        let (reply, _) = end_of_data(&both, 1, Some(&ReversePath::Null));
        assert_eq!(
            reply.lines.last().map(String::as_str),
            Some("1 recipient(s) failed: no notification for a null sender")
        );
    }
}
