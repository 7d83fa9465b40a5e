//! The `smtp-relay` binary as users run it.

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
}

#[test]
fn check_reads_arguments_and_exits_1_on_a_refused_line() {
    let out = bin()
        .args(["check", "MAIL FROM: <a@b.example>", "RCPT TO:<bupt.edu.cn>"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("ok    MAIL FROM:<a@b.example>\n"),
        "{stdout}"
    );
    assert!(stdout.contains("reply 501 5.1.3"), "{stdout}");
}

#[test]
fn check_reads_standard_input_with_crlf() {
    let mut child = bin()
        .arg("check")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"EHLO [192.0.2.1]\r\nrcpt to:<Postmaster>\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ok    EHLO [192.0.2.1]\nok    RCPT TO:<Postmaster>\n"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = bin().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}

/// Starts `smtp-relay up` with `extra` arguments on port 0 everywhere, in a fresh data
/// directory; returns the child, its banner lines (up to the Ctrl-C line) and the directory.
type Started = (
    fake_upstream::testing::Reap,
    Vec<String>,
    std::path::PathBuf,
);

fn start_up(name: &str, extra: &[&str]) -> Started {
    start_up_in(name, extra, true)
}

/// `up` in `<tmp>/<name>-<pid>`, emptied first when `fresh`.
fn start_up_in(name: &str, extra: &[&str], fresh: bool) -> Started {
    use std::io::{BufRead, BufReader};
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let child = bin()
        .arg("up")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
        .args([
            "--upstream-listen",
            "127.0.0.1:0",
            "--upstream-listen-tls",
            "127.0.0.1:0",
            "--qq-listen",
            "127.0.0.1:0",
            "--web",
            "127.0.0.1:0",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = fake_upstream::testing::Reap(child);
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut banner = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "up exited early: {banner:?}"
        );
        let done = line.starts_with("Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    // Keep reading its output (so that it never blocks on a full pipe).
    std::thread::spawn(move || for _ in out.lines() {});
    (child, banner, dir)
}

/// GET with curl: the status and the JSON body.
fn curl_json(url: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// Ctrl-C for a started `up`: it stops cleanly (exit status 0).
fn interrupt(child: &mut fake_upstream::testing::Reap) {
    let killed = Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The curl command `up` printed, run in a shell.
fn run_printed_curl(banner: &[String]) {
    let curl_start = banner
        .iter()
        .position(|l| l.trim_start().starts_with("printf"))
        .unwrap();
    let command = format!("{}{}", banner[curl_start], banner[curl_start + 1]);
    let run = Command::new("bash")
        .arg("-c")
        .arg(command.trim())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{command}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// `smtp-relay up` as a user runs it: it prints where things are and a curl command; the
/// printed command, pasted into a shell, sends a message that lands in the fake mailbox; Ctrl-C
/// (SIGINT) stops it cleanly.
#[test]
fn up_prints_a_command_that_works_and_stops_on_ctrl_c() {
    let (mut child, banner, dir) = start_up("up", &["--log-json"]);
    let text = banner.concat();
    assert!(
        text.contains("account     alice@163.com  code ALICEAUTHCODE163"),
        "{text}"
    );
    assert!(text.contains("ca.pem"), "{text}");
    assert!(text.contains("swaks --server 127.0.0.1:"), "{text}");
    run_printed_curl(&banner);
    // The page's API: the message, waited for as a CI script would, with the relay's
    // record and its two-hop transcript beside the fake's.
    let web = text
        .split("web page    ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the web page's address in the banner")
        .to_string();
    let (status, page) = curl_json(&format!("{web}api/v1/messages?to=bob@163.com&wait=10s"));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["subject"], "hello", "{page}");
    // 163's ids may hold a `/` and a `+`: in a path, encoded.
    let id = page["messages"][0]["id"]
        .as_str()
        .unwrap()
        .replace('/', "%2F")
        .replace('+', "%2B");
    let (_, t) = curl_json(&format!("{web}api/v1/messages/{id}/transcript"));
    let relay_lines: Vec<&str> = t["relay"]["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("the relay's transcript: {t}"))
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        relay_lines.iter().any(|l| l.starts_with("C: MAIL FROM")),
        "{relay_lines:?}"
    );
    assert!(
        relay_lines
            .iter()
            .any(|l| l.trim_start().starts_with("U> MAIL FROM")),
        "{relay_lines:?}"
    );
    assert!(
        !relay_lines.concat().contains("ALICEAUTHCODE163"),
        "AUTH redacted"
    );
    assert!(
        t["relay"]["log"]
            .as_array()
            .is_some_and(|l| l.iter().any(|l| l.as_str().unwrap().contains("delivered"))),
        "the relay's log lines about the message: {t}"
    );
    assert!(
        t["relay"]["record"]["id"].is_string(),
        "the relay's spool record: {t}"
    );
    assert!(
        t["upstream"]["lines"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{t}"
    );
    let (status, records) = curl_json(&format!("{web}api/v1/relay/records"));
    assert_eq!(status, 200);
    assert_eq!(
        records["records"].as_array().map(Vec::len),
        Some(1),
        "{records}"
    );
    let mailbox = dir.join("upstream/mailboxes/bob@163.com");
    let files: Vec<_> = std::fs::read_dir(&mailbox).unwrap().collect();
    assert!(
        files.len() >= 2,
        "an .eml and a .json in {}",
        mailbox.display()
    );
    // The spool: the message's file, and its record in the record log.
    let spool_files = smtp_relay::spool::files(&dir.join("spool")).unwrap();
    assert_eq!(spool_files.len(), 2, "{spool_files:?}");
    assert_eq!(
        smtp_relay::spool::records(&dir.join("spool"))
            .unwrap()
            .len(),
        1
    );
    interrupt(&mut child);

    // One JSON log line per delivery outcome, carrying the spool id.
    let spooled: Vec<String> = smtp_relay::spool::files(&dir.join("spool"))
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let log = std::fs::read_to_string(dir.join("log/relay.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let delivered: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["outcome"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{log}");
    assert_eq!(delivered[0]["id"], spooled[0].as_str());
    assert!(
        delivered[0]["reply"]
            .as_str()
            .unwrap()
            .starts_with("250 Mail OK queued as")
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "auth" && l["reply"] == 235)
    );
    assert!(!log.contains("ALICEAUTHCODE163"), "no secret in the log");
}

/// `up --persona qq`: the relay in front of the fake QQ, whose words come back verbatim.
#[test]
fn up_with_the_qq_persona() {
    use std::io::{BufRead, BufReader};
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("up-qq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = fake_upstream::testing::Reap(
        bin()
            .args(["up", "--persona", "qq", "--data-dir"])
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
            .args(["--upstream-listen", "127.0.0.1:0"])
            .args(["--upstream-listen-tls", "127.0.0.1:0"])
            .args(["--no-web"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "up exited early: {text}"
        );
        text.push_str(&line);
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert!(
        text.contains("account     alice@qq.com  code ALICEAUTHCODE163"),
        "{text}"
    );
    let port: u16 = text
        .split("relay       127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let script = r#"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.login("alice@qq.com", "ALICEAUTHCODE163")
    code, text = s.docmd("MAIL", "FROM:<bob@qq.com>")
    print(code, text.decode())
    s.rset()
    s.sendmail("alice@qq.com", ["bob@qq.com"], "Subject: hi\r\n\r\nx\r\n")
    print("sent")
"#;
    let run = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        stdout,
        "501 mail from address must be same as authorization user\nsent\n"
    );
    let mailbox = dir.join("upstream/mailboxes/bob@qq.com");
    assert!(std::fs::read_dir(&mailbox).unwrap().count() >= 2);
}

/// `smtp-relay load --self --sweep`, bounded: the baseline and two steps in the table, the
/// JSON and the HTML; and a sweep with no fake to put its faults on is refused, saying why.
#[test]
fn load_sweep_reports_each_step_and_wants_a_fake() {
    let dir = fake_upstream::testing::temp_dir("cli-load-sweep");
    let out = Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .args([
            "load",
            "--self",
            "--connections",
            "4",
            "--sweep",
            "end of data: delay {0,100}ms",
            "--duration",
            "0.75",
            "--recovery",
            "0.75",
            "--quiet",
        ])
        .arg("--json")
        .arg(dir.join("sweep.json"))
        .arg("--html")
        .arg(dir.join("sweep.html"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "baseline",
        "end of data: delay 0ms",
        "end of data: delay 100ms",
    ] {
        assert!(stdout.contains(&format!("  {step} ")), "{step}: {stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    let steps = json["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    let p50 = |i: usize| {
        steps[i]["started_during"]["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == "message")
            .unwrap()["p50_ms"]
            .as_f64()
            .unwrap()
    };
    assert!(p50(2) >= 100.0 && p50(0) < 100.0, "{} {}", p50(0), p50(2));
    let html = std::fs::read_to_string(dir.join("sweep.html")).unwrap();
    assert!(
        html.contains("Throughput per step while the fault held")
            && html.matches("<svg").count() == 3
    );

    let out = Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .args([
            "load",
            "--target",
            "127.0.0.1:9",
            "--sweep",
            "MAIL: 451 {a,b}",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--fake-api URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `smtp-relay load --self`, bounded, with every report file: the table and the ratio on
/// standard output, JSON that parses with both runs, an interval log, an HTML page.
#[test]
fn load_self_prints_the_table_and_writes_the_reports() {
    let dir = fake_upstream::testing::temp_dir("cli-load-self");
    let out = Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
        .args([
            "load",
            "--self",
            "--messages",
            "300",
            "--connections",
            "4",
            "--per-connection",
            "20",
            "--quiet",
        ])
        .arg("--json")
        .arg(dir.join("load.json"))
        .arg("--hlog")
        .arg(dir.join("load.hlog"))
        .arg("--html")
        .arg(dir.join("load.html"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("300 messages delivered, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("integrity    300 intact, 0 corrupted, 0 lost, 0 duplicated"),
        "{stdout}"
    );
    assert!(
        stdout.contains("through the relay / direct to the sink: "),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("load.json")).unwrap()).unwrap();
    assert_eq!(json["runs"][0]["name"], "direct");
    assert_eq!(json["runs"][1]["name"], "relay");
    assert_eq!(json["runs"][1]["delivered"], 300);
    assert!(json["relay_over_direct"].as_f64().unwrap() > 0.0);
    let hlog = std::fs::read_to_string(dir.join("load.hlog")).unwrap();
    assert!(
        hlog.contains("#[StartTime: ") && hlog.contains("Tag=message,"),
        "{hlog}"
    );
    let html = std::fs::read_to_string(dir.join("load.html")).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.matches("<svg").count() == 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `up --queue`: the printed command's message gets its 250 once queued, and the scheduler
/// delivers it to the fake 163 with alice's code from the secrets; the queue empties.
#[test]
fn up_queue_queues_then_delivers() {
    let (mut child, banner, dir) = start_up("up-queue", &["--queue"]);
    let text = banner.concat();
    assert!(text.contains("queue       "), "{text}");
    run_printed_curl(&banner);
    // The page's API: in queue mode the relay's transcript is the client's session (the
    // delivery from the queue is the fake's side).
    let web = text
        .split("web page    ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the web page's address in the banner")
        .to_string();
    let (status, page) = curl_json(&format!("{web}api/v1/messages?to=bob@163.com&wait=10s"));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"][0]["subject"], "hello", "{page}");
    // 163's ids may hold a `/` and a `+`: in a path, encoded.
    let id = page["messages"][0]["id"]
        .as_str()
        .unwrap()
        .replace('/', "%2F")
        .replace('+', "%2B");
    let (_, t) = curl_json(&format!("{web}api/v1/messages/{id}/transcript"));
    let relay_lines: Vec<&str> = t["relay"]["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("the relay's transcript: {t}"))
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        relay_lines.iter().any(|l| l.starts_with("C: MAIL FROM")),
        "{relay_lines:?}"
    );
    assert!(
        relay_lines
            .iter()
            .any(|l| l.starts_with("S: 250 2.0.0 queued as")),
        "{relay_lines:?}"
    );
    assert!(
        !relay_lines.concat().contains("ALICEAUTHCODE163"),
        "AUTH redacted"
    );
    assert!(
        t["relay"]["record"]["id"].is_string(),
        "the relay's spool record: {t}"
    );
    assert!(
        t["upstream"]["lines"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "{t}"
    );
    let (status, records) = curl_json(&format!("{web}api/v1/relay/records"));
    assert_eq!(status, 200);
    assert_eq!(
        records["records"].as_array().map(Vec::len),
        Some(1),
        "{records}"
    );
    let mailbox = dir.join("upstream/mailboxes/bob@163.com");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::fs::read_dir(&mailbox).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing delivered from the queue"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let queued = || {
        smtp_relay::spool::files(&dir.join("queue/msg"))
            .unwrap()
            .len()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while queued() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue kept {} files",
            queued()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    interrupt(&mut child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file and directory under `dir`, with its mode.
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.clone(), meta.permissions().mode() & 0o777));
            if meta.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Restarting `up` in the same data directory replaces no file of the earlier run (the relay's
/// transcripts, the fake's transcripts and raw DATA copies, mailboxes), and everything the
/// relay and the fake wrote is private to the user (0600 files in 0700 directories).
#[test]
fn a_restart_replaces_no_file_and_everything_is_private() {
    let mut before: Vec<(std::path::PathBuf, Vec<u8>)> = Vec::new();
    for run in 0..2 {
        let (mut child, banner, dir) = if run == 0 {
            start_up("restart", &[])
        } else {
            start_up_in("restart", &[], false)
        };
        run_printed_curl(&banner);
        interrupt(&mut child);
        let files = modes(&dir);
        let contents: Vec<(std::path::PathBuf, Vec<u8>)> = files
            .iter()
            .filter(|(p, _)| p.is_file())
            .map(|(p, _)| (p.clone(), std::fs::read(p).unwrap()))
            .collect();
        // A file of the first run is still there as it was (the log may only have grown);
        // only the spool's retention sweep may remove one (by its modification time, which
        // under a faked clock can look months old).
        for (p, c) in &before {
            match contents.iter().find(|(q, _)| q == p).map(|(_, c)| c) {
                Some(now) => assert!(
                    now.starts_with(c),
                    "{} of the first run was replaced",
                    p.display()
                ),
                None => assert!(
                    p.starts_with(dir.join("spool")),
                    "{} of the first run was removed",
                    p.display()
                ),
            }
        }
        for (p, mode) in &files {
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(*mode, want, "{} is {mode:o}", p.display());
        }
        if run == 1 {
            for sub in ["transcripts", "upstream/transcripts", "upstream/raw"] {
                let n = std::fs::read_dir(dir.join(sub)).unwrap().count();
                assert!(n >= 2, "{sub}: {n} file(s) after two runs");
            }
        }
        before = contents;
    }
}

/// `up` routes qq.com to its fake qq.com MX and says so: one message to a 163 and a qq.com
/// recipient (python3's smtplib over implicit TLS, verifying the CA) lands in both mailboxes.
#[test]
fn up_routes_qq_com_to_its_fake_mx() {
    let (mut child, banner, dir) = start_up("up-qq-route", &[]);
    let text = banner.concat();
    assert!(
        text.contains("route       qq.com -> fake qq.com MX on 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("add --to bob@qq.com"), "{text}");
    let tls = text
        .lines()
        .find(|l| l.trim_start().starts_with("relay "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|a| a.split(' ').next())
        .unwrap()
        .to_string();
    let script = "import smtplib, ssl, sys\n\
        host, port = sys.argv[1].rsplit(':', 1)\n\
        ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
        s = smtplib.SMTP_SSL('localhost', int(port), context=ctx, timeout=20)\n\
        s.login('alice@163.com', 'ALICEAUTHCODE163')\n\
        s.sendmail('alice@163.com', ['bob@163.com', 'bob@qq.com'], 'From: alice@163.com\\r\\nSubject: two domains\\r\\n\\r\\nHi.\\r\\n')\n\
        s.quit()\n";
    let run = Command::new("python3")
        .args(["-c", script, &tls])
        .arg(dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for mailbox in [
        "upstream/mailboxes/bob@163.com",
        "upstream-qq/mailboxes/bob@qq.com",
    ] {
        let emls = std::fs::read_dir(dir.join(mailbox))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "eml")
            })
            .count();
        assert_eq!(emls, 1, "{mailbox}");
    }
    interrupt(&mut child);
}

fn listed(args: &[&str]) -> Vec<String> {
    let out = bin()
        .args(["scenarios", "--list"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" ["))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn scenarios_select_by_tag_and_shard() {
    let portable = listed(&["--tag", "portable"]);
    assert!(portable.len() >= 21, "{portable:?}");
    assert!(portable.contains(&"smuggle-lf-dot-lf".to_string()));
    let all = listed(&[]);
    let not_portable = listed(&["--exclude-tag", "portable"]);
    assert_eq!(portable.len() + not_portable.len(), all.len());
    // Two shards partition the selection, in name order.
    let mut a = listed(&["--tag", "portable", "--shard", "1/2"]);
    let b = listed(&["--tag", "portable", "--shard", "2/2"]);
    assert!(!a.is_empty() && !b.is_empty());
    assert!(a.iter().all(|n| !b.contains(n)));
    a.extend(b);
    a.sort();
    assert_eq!(a, portable);
    let out = bin()
        .args(["scenarios", "--list", "--shard", "3/2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected I/N"));
}

#[test]
fn scenarios_fail_fast_and_machine_readable_outputs() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-fail-fast-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let body = "upstream: sink\nrelay: auth=none\n\nconnect\nS: 220 *\nC: EHLO c.example\n";
    std::fs::write(
        dir.join("a-fails.scn"),
        format!("description: fails\n{body}S: 999\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("b-passes.scn"),
        format!("description: passes\n{body}S: 250 *\nquit\n"),
    )
    .unwrap();
    let (json, tap) = (dir.join("out.json"), dir.join("out.tap"));
    let out = bin()
        .args(["scenarios", "--jobs", "1", "--fail-fast", "--json"])
        .arg(&json)
        .arg("--tap")
        .arg(&tap)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["failed"], 1);
    assert_eq!(j["skipped"], 1, "{j}");
    assert_eq!(
        j["scenarios"][1]["reason"],
        "not run: --fail-fast after a failure"
    );
    let t = std::fs::read_to_string(&tap).unwrap();
    assert!(
        t.starts_with("TAP version 13\n1..2\nnot ok 1 - a-fails\n"),
        "{t}"
    );
    assert!(t.contains("ok 2 - b-passes # SKIP"), "{t}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_scenario_requiring_what_the_relay_lacks_is_skipped_with_the_reason() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-requires-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let body = "upstream: sink\nrelay: auth=none\n\nconnect\nS: 220 *\nquit\n";
    // smtp-relay offers PIPELINING, not DSN.
    std::fs::write(
        dir.join("needs-dsn.scn"),
        format!("description: x\nrequires: DSN\n{body}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("needs-pipelining.scn"),
        format!("description: y\nrequires: pipelining\n{body}"),
    )
    .unwrap();
    let json = dir.join("out.json");
    let out = bin()
        .args(["scenarios", "--json"])
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(j["scenarios"][0]["name"], "needs-dsn");
    assert_eq!(
        j["scenarios"][0]["reason"],
        "requires DSN, which the relay does not advertise"
    );
    assert_eq!(j["scenarios"][1]["verdict"], "pass");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checks and directives a scenario grew (`expect not delivered`, `expect messages: at
/// most`, `expect upstream data 7bit` and `matches`, `within`, `repeat`, a fault `for` a while,
/// `upstream-limit`): a scenario that uses them and passes, and for each check one that must
/// fail, with the reason it gives.
#[test]
fn scenario_checks_that_pass_and_fail() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-new-checks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let head = "upstream: sink\nrelay: auth=none\n\nconnect\nS: 220 *\nC: EHLO c.example\nS: 250 *\nC: MAIL FROM:<a@example.com>\nS: 250 *\n";
    let data = |body: &str| {
        format!("C: DATA\nS: 354 *\nraw: Subject: hi\\r\\n\\r\\n{body}\\r\\n.\\r\\n\n")
    };
    let files = [
        (
            "a-passes",
            format!(
                "description: passes\nupstream-limit: max_recipients=3\nfault: rcpt c9@example.net: 451 4.3.0 busy, for 400ms\n{head}repeat 3: C: RCPT TO:<u{{i}}@example.net>\nrepeat 3: S: 250 *\nC: RCPT TO:<u4@example.net>\nS: 452 *\nC: RCPT TO:<c9@example.net>\nS: 451 4.3.0 busy\nsleep 500ms\nC: RCPT TO:<c9@example.net>\nS: 452 *\n{}within 5s\nS: 250 *\nquit\n\nexpect delivered: u1@example.net u2@example.net u3@example.net\nexpect not delivered: u4@example.net c9@example.net\nexpect messages: at most 1\nexpect upstream data 7bit\nexpect upstream data matches: (?m)^Subject: hi\\r$\n",
                data("plain")
            ),
        ),
        (
            "b-delivered-after-all",
            format!(
                "description: fails\n{head}C: RCPT TO:<b@example.net>\nS: 250 *\n{}S: 250 *\nquit\n\nexpect not delivered: B@example.net\n",
                data("x")
            ),
        ),
        (
            "c-too-many",
            format!(
                "description: fails\n{head}C: RCPT TO:<b@example.net>\nS: 250 *\n{}S: 250 *\nC: MAIL FROM:<a@example.com>\nS: 250 *\nC: RCPT TO:<b@example.net>\nS: 250 *\n{}S: 250 *\nquit\n\nexpect messages: at most 1\n",
                data("one"),
                data("two")
            ),
        ),
        (
            "d-eight-bit",
            format!(
                "description: fails\n{head}C: RCPT TO:<b@example.net>\nS: 250 *\n{}S: 250 *\nquit\n\nexpect upstream data 7bit\n",
                data("caf\\xc3\\xa9")
            ),
        ),
        (
            "e-no-match",
            format!(
                "description: fails\n{head}C: RCPT TO:<b@example.net>\nS: 250 *\n{}S: 250 *\nquit\n\nexpect upstream data matches: (?i)subject: nope\n",
                data("x")
            ),
        ),
        (
            "g-quota-refills",
            format!(
                "description: passes\nfault: rcpt: 451 4.7.1 quota, beyond 1 per 1m\n{head}C: RCPT TO:<b1@example.net>\nS: 250 *\nC: RCPT TO:<b2@example.net>\nS: 451 4.7.1 quota\nupstream clock +59s\nC: RCPT TO:<b3@example.net>\nS: 451 4.7.1 quota\nupstream clock +1s\nC: RCPT TO:<b4@example.net>\nS: 250 *\nquit\n"
            ),
        ),
        (
            "h-quota-still-full",
            format!(
                "description: fails\nfault: rcpt: 451 4.7.1 quota, beyond 1 per 1m\n{head}C: RCPT TO:<b1@example.net>\nS: 250 *\nupstream clock +30s\nC: RCPT TO:<b2@example.net>\nS: 250 *\nquit\n"
            ),
        ),
        (
            "f-too-slow",
            format!(
                "description: fails\nfault: end of data: delay 1500ms\n{head}C: RCPT TO:<b@example.net>\nS: 250 *\n{}within 300ms\nS: 250 *\nquit\n",
                data("x")
            ),
        ),
    ];
    for (name, text) in &files {
        std::fs::write(dir.join(format!("{name}.scn")), text).unwrap();
    }
    let json = dir.join("out.json");
    let out = bin()
        .args(["scenarios", "--json"])
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let reason = |name: &str| {
        let s = j["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap();
        (
            s["verdict"].as_str().unwrap().to_string(),
            s["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(reason("a-passes").0, "pass", "{:?}", reason("a-passes"));
    assert_eq!(
        reason("g-quota-refills").0,
        "pass",
        "{:?}",
        reason("g-quota-refills")
    );
    for (name, says) in [
        ("b-delivered-after-all", "got a copy for B@example.net"),
        (
            "c-too-many",
            "expected at most 1 message(s) upstream, the upstreams got 2",
        ),
        ("d-eight-bit", "2 octet(s) above 127"),
        ("e-no-match", "matches \"(?i)subject: nope\""),
        ("f-too-slow", "not done within 300ms (`within` at line"),
        ("h-quota-still-full", "expected 250 *, got 451 4.7.1 quota"),
    ] {
        let (verdict, why) = reason(name);
        assert_eq!(verdict, "fail", "{name}: {why}");
        assert!(why.contains(says), "{name}: {why}");
        assert!(
            why.ends_with("[seed 1]"),
            "every failure names the seed: {why}"
        );
    }
}

/// `--coverage`: the catalogue's cases against the scenarios that cite them, and the gaps.
#[test]
fn scenarios_coverage_report() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-coverage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("s")).unwrap();
    std::fs::write(
        dir.join("cases.md"),
        "## A. Greeting\n\n1. **Early talker.**\n   - RFC: RFC 5321 §3.1.\n2. **EHLO without an argument.**\n   - RFC: RFC 5321 §4.1.4.\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("s/helo.scn"),
        "description: d\ncovers: 2\nupstream: sink\nconnect\nS: 220 *\n",
    )
    .unwrap();
    let out = bin()
        .args(["scenarios", "--coverage"])
        .arg(dir.join("cases.md"))
        .arg(dir.join("s"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("A. Greeting (1 of 2 cases tested)"), "{text}");
    assert!(text.contains("    1. Early talker: none"), "{text}");
    assert!(
        text.contains("    2. EHLO without an argument: helo"),
        "{text}"
    );
    assert!(
        text.contains("RFC sections cited only by untested cases (1): RFC 5321 §3.1"),
        "{text}"
    );
    // A catalogue with no numbered case is an error, not an empty report.
    std::fs::write(dir.join("empty.md"), "# nothing\n").unwrap();
    let out = bin()
        .args(["scenarios", "--coverage"])
        .arg(dir.join("empty.md"))
        .arg(dir.join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no numbered cases"));
}
