use super::*;
use fake_upstream::{DropWhen, Stage};

const SEED: &str = r#"# The seed's session.
description: Foxmail-style session, three domains
tags: portable
timeout: 20s
upstream: 163
user: alice@163.com ALICEAUTHCODE163
fault: RCPT bob@163.com: 451 4.7.1 busy, twice
fault: drop after DATA
route qq: qq.com .qq.com -> qq-mx
fault qq: end of data: 554 DT:SPM, 2nd time
relay: max_recipients=3 command_timeout=2s

connect
S: 220 relay.test*
C: EHLO foxmail.example
S: 250-relay.test*
S: 250-PIPELINING
S: 250 *
auth login alice@163.com ALICEAUTHCODE163
S: 235 Authentication successful
C: MAIL FROM:<alice@163.com>
C: RCPT TO:<bob@163.com>   # not a comment: C: lines are sent as written
raw: DATA\r\n
S: 250
S: 4xx
S: 2xx 2.1.5 *
message: seed.eml
S: 250 Mail OK queued as *
sleep 250ms
quit

expect delivered: bob@163.com friend@qq.com
expect messages: 1
expect body intact
expect upstream saw: RCPT TO:<bob@163.com>
expect upstream never saw: chengli
expect upstream got: Subject: x\r\n\r\nhi\r\n
expect bounce to: alice@163.com
"#;

#[test]
fn parses_the_format() {
    let sc = Scenario::parse(SEED, Path::new("scenarios/seed.scn")).unwrap();
    assert_eq!(sc.name, "seed");
    assert_eq!(sc.description, "Foxmail-style session, three domains");
    assert_eq!(sc.tags, ["portable"]);
    assert_eq!(sc.timeout, Duration::from_secs(20));
    assert_eq!(
        sc.upstream.users.as_ref().unwrap()[0].code,
        "ALICEAUTHCODE163"
    );
    assert_eq!(
        sc.upstream.faults[0].address.as_deref(),
        Some("bob@163.com")
    );
    assert_eq!(sc.upstream.faults[0].first, Some(2));
    assert_eq!(
        sc.upstream.faults[0].reply.as_deref(),
        Some("451 4.7.1 busy")
    );
    assert_eq!(sc.upstream.faults[1].stage, Stage::Data);
    assert_eq!(sc.upstream.faults[1].drop, Some(DropWhen::After));
    assert_eq!(sc.routes[0].domains, ["qq.com", ".qq.com"]);
    assert_eq!(sc.routes[0].upstream.persona, "qq-mx");
    assert_eq!(sc.routes[0].upstream.faults[0].nth, Some(2));
    assert_eq!(sc.relay[1], ("command_timeout".into(), "2s".into()));
    let steps: Vec<&Step> = sc.steps.iter().map(|s| &s.item).collect();
    assert_eq!(steps[0], &Step::Connect { tls: false });
    match steps[3] {
        Step::Expect(e) => assert_eq!(e.lines.len(), 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        steps[7],
        &Step::Send(
            b"RCPT TO:<bob@163.com>   # not a comment: C: lines are sent as written\r\n".to_vec()
        )
    );
    assert_eq!(steps[8], &Step::Send(b"DATA\r\n".to_vec()));
    assert_eq!(
        sc.steps[3].line, 16,
        "a multi-line expectation starts at its first line"
    );
    assert_eq!(sc.checks.len(), 7);
    assert_eq!(
        sc.checks[5].item,
        Check::UpstreamGot(b"Subject: x\r\n\r\nhi\r\n".to_vec())
    );
}

#[test]
fn round_trips_through_text() {
    let sc = Scenario::parse(SEED, Path::new("seed.scn")).unwrap();
    let again = Scenario::parse(&sc.to_text(), Path::new("seed.scn")).unwrap();
    let strip = |s: &Scenario| {
        let mut s = s.clone();
        for l in &mut s.steps {
            l.line = 0;
        }
        for l in &mut s.checks {
            l.line = 0;
        }
        s
    };
    assert_eq!(strip(&sc), strip(&again), "{}", sc.to_text());
}

#[test]
fn errors_name_the_line_and_the_problem() {
    let e = |text: &str| Scenario::parse(text, Path::new("x.scn")).unwrap_err();
    let err = e("connect\nS: 2y0\n");
    assert_eq!(
        (err.line, err.message.contains("reply code")),
        (2, true),
        "{err}"
    );
    let err = e("connect\nS: 250-a\nC: x\n");
    assert_eq!(err.line, 2, "{err}");
    assert!(err.message.contains("multi-line"), "{err}");
    let err = e("C: EHLO x\n");
    assert!(err.message.contains("must begin with connect"), "{err}");
    let err = e("relay: colour=red\n");
    assert!(err.message.contains("not a relay option"), "{err}");
    let err = e("fault qq: RCPT: 451 x\n");
    assert!(err.message.contains("no route named"), "{err}");
    let err = e("connect\nraw: \\q\n");
    assert!(err.message.contains("unknown escape"), "{err}");
    let err = e("frobnicate\n");
    assert!(
        err.to_string()
            .starts_with("x.scn:1: \"frobnicate\": not a scenario line"),
        "{err}"
    );
}

#[test]
fn escapes_round_trip() {
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(unescape(&escape(&all)).unwrap(), all);
    assert_eq!(unescape("a\\r\\n.\\x00\\\\").unwrap(), b"a\r\n.\0\\");
}

#[test]
fn b64_templates() {
    assert_eq!(
        expand("AUTH PLAIN {b64:\\0a@b\\0c}").unwrap(),
        b"AUTH PLAIN AGFAYgBj"
    );
    assert!(expand("{b64:x").is_err());
}

#[test]
fn codes() {
    assert!(CodePattern("2xx".into()).matches(250));
    assert!(CodePattern("250".into()).matches(250));
    assert!(!CodePattern("4xx".into()).matches(250));
}

#[test]
fn alternatives_where_the_rfcs_leave_a_choice() {
    let text = "connect\nS: 250 ok* | 5xx *\nS: 220 *\n";
    let sc = Scenario::parse(text, Path::new("alt.scn")).unwrap();
    let Step::Expect(e) = &sc.steps[1].item else {
        panic!("{:?}", sc.steps[1]);
    };
    assert_eq!(
        e.lines,
        vec![(CodePattern("250".into()), Some("ok*".into()))]
    );
    assert_eq!(e.or, vec![(CodePattern("5xx".into()), Some("*".into()))]);
    let reply = |s: &str| smtp_wire::Reply::parse(s.as_bytes()).unwrap();
    assert!(run::reply_matches(e, &reply("250 ok, queued\r\n")));
    assert!(run::reply_matches(e, &reply("554 5.6.0 bare LF\r\n")));
    assert!(!run::reply_matches(e, &reply("451 4.3.0 later\r\n")));
    assert!(!run::reply_matches(e, &reply("250 queued\r\n")));
    // A single pattern, without alternatives, is unchanged.
    let Step::Expect(single) = &sc.steps[2].item else {
        panic!()
    };
    assert!(single.or.is_empty());
    // Written back and read again, the same.
    let again = Scenario::parse(&sc.to_text(), Path::new("alt.scn")).unwrap();
    let items = |s: &Scenario| s.steps.iter().map(|l| l.item.clone()).collect::<Vec<_>>();
    assert_eq!(items(&again), items(&sc));
    let e = Scenario::parse("S: 250-x | 550\n", Path::new("bad.scn")).unwrap_err();
    assert!(e.message.contains("a whole reply"), "{e}");
}

#[test]
fn repeat_within_limits_and_the_new_checks() {
    let text = "upstream-limit: max_recipients=3 sender_per_15min=none\nconnect\nrepeat 3: C: RCPT TO:<u{i}@163.com>\nwithin 2s\nS: 250 *\n\nexpect not delivered: x@163.com y@163.com\nexpect messages: at most 2\nexpect upstream data 7bit\nexpect upstream data matches: (?i)^subject\n";
    let sc = Scenario::parse(text, Path::new("new.scn")).unwrap();
    assert_eq!(
        sc.upstream.limits,
        [
            ("max_recipients".to_string(), "3".to_string()),
            ("sender_per_15min".to_string(), "none".to_string())
        ]
    );
    let sends: Vec<(usize, &Step)> = sc.steps.iter().map(|l| (l.line, &l.item)).collect();
    assert_eq!(
        sends[1],
        (3, &Step::Send(b"RCPT TO:<u1@163.com>\r\n".to_vec()))
    );
    assert_eq!(
        sends[3],
        (3, &Step::Send(b"RCPT TO:<u3@163.com>\r\n".to_vec()))
    );
    assert_eq!(sends[4], (4, &Step::Within(Duration::from_secs(2))));
    let checks: Vec<&Check> = sc.checks.iter().map(|c| &c.item).collect();
    assert_eq!(
        checks,
        [
            &Check::NotDelivered(vec!["x@163.com".into(), "y@163.com".into()]),
            &Check::MessagesAtMost(2),
            &Check::UpstreamData7Bit,
            &Check::UpstreamDataMatches("(?i)^subject".into()),
        ]
    );
    // Written back (the repeat written out) and read again: the same.
    let again = Scenario::parse(&sc.to_text(), Path::new("new.scn")).unwrap();
    assert_eq!(again.checks.len(), 4);
    assert_eq!(again.upstream.limits, sc.upstream.limits);
    let items = |s: &Scenario| s.steps.iter().map(|l| l.item.clone()).collect::<Vec<_>>();
    assert_eq!(items(&again), items(&sc));
    for (bad, says) in [
        ("repeat 0: C: NOOP\n", "a count from 1 to 10000"),
        ("repeat 20000: C: NOOP\n", "a count from 1 to 10000"),
        ("repeat 2: repeat 2: C: NOOP\n", "cannot be nested"),
        ("repeat two\n", "expected repeat N: LINE"),
        ("upstream-limit: max_rcpts=3\n", "is not a limit"),
        ("upstream-limit: max_recipients=many\n", "is not a number"),
        (
            "expect upstream data matches: (unclosed\n",
            "is not a regular expression",
        ),
        ("expect messages: at most many\n", "is not a count"),
        ("within soon\n", ""),
    ] {
        let e = Scenario::parse(bad, Path::new("bad.scn")).unwrap_err();
        assert!(e.message.contains(says), "{bad:?}: {e}");
    }
    let sc = Scenario::parse("fault: rcpt: 451 busy, for 2s\n", Path::new("f.scn")).unwrap();
    assert_eq!(sc.upstream.faults[0].for_ms, Some(2000));
    assert!(
        sc.to_text().contains(": 451 busy, for 2000ms"),
        "{}",
        sc.to_text()
    );
}

#[test]
fn a_quota_that_refills_and_the_upstream_clock() {
    let f = parse_fault("MAIL: 451 MI:SFQ 163 smtp9, beyond 3 per 15m").unwrap();
    assert_eq!(
        f.quota,
        Some(fake_upstream::faults::Quota {
            count: 3,
            per_ms: 900_000
        })
    );
    assert_eq!(
        fault_text(&f),
        "MAIL: 451 MI:SFQ 163 smtp9, beyond 3 per 900000ms"
    );
    // Not a selector: the words stay part of the reply text.
    let f = parse_fault("MAIL: 451 busy, beyond reach").unwrap();
    assert_eq!(
        (f.reply.as_deref(), f.quota),
        (Some("451 busy, beyond reach"), None)
    );
    let sc = Scenario::parse(
        "connect\nupstream clock +15m\nupstream clock +1h\nupstream clock +500ms\n",
        Path::new("c.scn"),
    )
    .unwrap();
    let ahead: Vec<Duration> = sc
        .steps
        .iter()
        .filter_map(|l| match l.item {
            Step::AdvanceClock(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(
        ahead,
        [
            Duration::from_secs(900),
            Duration::from_secs(3600),
            Duration::from_millis(500)
        ]
    );
    assert!(
        sc.to_text().contains("upstream clock +15m\n"),
        "{}",
        sc.to_text()
    );
    for (bad, says) in [
        ("upstream clock 15m\n", "expected upstream clock +DURATION"),
        ("upstream clock +soon\n", "is not a duration"),
        ("upstream clock +5mm\n", "is not a duration"),
    ] {
        let e = Scenario::parse(bad, Path::new("bad.scn")).unwrap_err();
        assert!(e.message.contains(says), "{bad:?}: {e}");
    }
}

#[test]
fn bdat_steps_count_their_own_sizes() {
    let text = "connect\nbdat: Subject: x\\r\\n #not a comment\nbdat last:\nbdat last:  lead\nbdat message: hello.eml chunks 64\nbdat message size 5000 chunks 1000\nbdat message: two words.eml\n";
    let sc = Scenario::parse(text, Path::new("bdat.scn")).unwrap();
    let items: Vec<Step> = sc.steps.iter().map(|l| l.item.clone()).collect();
    assert_eq!(
        items[1..],
        [
            Step::Bdat {
                content: b"Subject: x\r\n #not a comment".to_vec(),
                last: false
            },
            Step::Bdat {
                content: Vec::new(),
                last: true
            },
            Step::Bdat {
                content: b" lead".to_vec(),
                last: true
            },
            Step::BdatMessage {
                message: MessageSource::File("hello.eml".into()),
                chunk: Some(64)
            },
            Step::BdatMessage {
                message: MessageSource::Generated(5000),
                chunk: Some(1000)
            },
            Step::BdatMessage {
                message: MessageSource::File("two words.eml".into()),
                chunk: None
            },
        ]
    );
    let again = Scenario::parse(&sc.to_text(), Path::new("bdat.scn")).unwrap();
    let again: Vec<Step> = again.steps.iter().map(|l| l.item.clone()).collect();
    assert_eq!(again, items);
    for (bad, says) in [
        ("connect\nbdat message size 10 chunks 0\n", "a chunk size"),
        ("connect\nbdat message: a.eml chunks x\n", "a chunk size"),
        ("connect\nbdat: \\q\n", "escape"),
    ] {
        let e = Scenario::parse(bad, Path::new("bad.scn")).unwrap_err();
        assert!(e.message.contains(says), "{bad}: {e}");
    }
}

#[test]
fn a_file_named_twice_runs_once() {
    let dir = std::env::temp_dir().join(format!("scn-find-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["b.scn", "a.scn", "notes.txt"] {
        std::fs::write(dir.join(name), "").unwrap();
    }
    let found = find(&[dir.join("b.scn"), dir.clone(), dir.join("./a.scn")]).unwrap();
    assert_eq!(found, [dir.join("b.scn"), dir.join("a.scn")]);
    assert!(
        find(&[dir.join("none.scn")])
            .unwrap_err()
            .contains("no such file")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
