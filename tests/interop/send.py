"""The client side of tests/interop/aiosmtpd.sh: Python's smtplib through the relay, one
session per case, each case a recipient domain routed to an aiosmtpd listener under one TLS
policy. Checks the relay's reply (the upstream's own words, or the relay's 4.7.5 with the
short form of the certificate problem) and what each aiosmtpd listener received.

Usage: send.py RELAY_PORT OUT USER PASSWORD"""

import glob
import smtplib
import sys

port, out, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

# domain, expected code, text the reply must contain, listener that must get it (or None),
# whether that listener must have seen TLS.
CASES = [
    ("corp.test", 250, "2.0.0 OK kept", "ss-auth", True),
    ("pinned.test", 250, "2.0.0 OK kept", "ss", True),
    ("untrusted.test", 451,
     "TLS: certificate not trusted: self-signed certificate (CA:TRUE) for localhost, 127.0.0.1",
     None, None),
    ("private.test", 250, "2.0.0 OK kept", "priv", True),
    ("wrongname.test", 451,
     "certificate name mismatch: certificate for mail.internal.example, not localhost", None, None),
    ("renamed.test", 250, "2.0.0 OK kept", "wrong", True),
    ("expired.test", 451, "certificate expired on 2020-", None, None),
    ("expiredpin.test", 250, "2.0.0 OK kept", "exp", True),
    ("encrypt.test", 250, "2.0.0 OK kept", "ss", True),
    ("may.test", 250, "2.0.0 OK kept", "plain", False),
    ("maytls.test", 250, "2.0.0 OK kept", "ss", True),
]

failures = []


def check(what, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    if not ok:
        failures.append(what)


def session():
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.test")
    return s


# The upstream's own AUTH replies, passed back verbatim (passthrough); the same wrong pair
# again is answered by the relay without asking (the upstream would ban the relay's address).
s = session()
s.user, s.password = user, "wrong-" + password
for mechanism, method, want in [
    ("PLAIN", s.auth_plain, "5.7.8 Authentication credentials invalid"),
    ("LOGIN", s.auth_login, "refused these credentials a short while ago"),
]:
    try:
        s.auth(mechanism, method)
        check(f"AUTH {mechanism} with a wrong code", False, "accepted")
    except smtplib.SMTPAuthenticationError as e:
        check(f"AUTH {mechanism} with a wrong code",
              e.smtp_code == 535 and want in e.smtp_error.decode(),
              f"{e.smtp_code} {e.smtp_error.decode()}")
s.close()

for domain, code, text, listener, tls in CASES:
    s = session()
    c, m = s.login(user, password)
    if domain == CASES[0][0]:
        check("AUTH", c == 235 and b"2.7.0" in m, f"{c} {m.decode()}")
    subject = f"case {domain}"
    reply = s.mail(f"{user}")
    if reply[0] == 250:
        reply = s.rcpt(f"rcpt@{domain}")
    if reply[0] == 250:
        body = f"From: <{user}>\r\nTo: <rcpt@{domain}>\r\nSubject: {subject}\r\n\r\nhello\r\n"
        reply = s.data(body.encode())
    got_code, got_text = reply[0], reply[1].decode()
    check(f"{domain} reply", got_code == code and text in got_text,
          f"{got_code} {got_text}")
    try:
        s.quit()
    except smtplib.SMTPException:
        pass
    if listener:
        found = [f for f in glob.glob(f"{out}/{listener}/*.eml")
                 if f"Subject: {subject}" in open(f, encoding="utf-8", errors="replace").read()]
        check(f"{domain} delivered to {listener}", len(found) == 1, f"{len(found)} copy")
        if found:
            seen_tls = f"X-TLS: {tls}" in open(found[0]).read()
            check(f"{domain} over {'TLS' if tls else 'plaintext'}", seen_tls, found[0])

# Nothing reached a listener that should not have been reached.
total = len(glob.glob(f"{out}/*/*.eml"))
expected = sum(1 for c in CASES if c[3])
check("messages received in all", total == expected, f"{total} (expected {expected})")

if failures:
    print(f"{len(failures)} check(s) failed: {', '.join(failures)}")
    sys.exit(1)
print(f"all {len(CASES)} cases as expected")
