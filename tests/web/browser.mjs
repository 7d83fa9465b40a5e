// The web page of `smtp-relay up` in headless Chromium (playwright-core driving Debian's
// chromium): a message sent with Python's smtplib appears without a reload, its GB2312
// subject shown in Chinese; its transcript shows both hops; a fault added from the page
// makes the next RCPT fail for the mail client. Screenshots go to $SHOTS.
//
// Env: WEB_URL (the page, as `up` printed it), RELAY_PORT, CA (up's ca.pem), SHOTS (a
// directory), CHROMIUM (default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";

const { WEB_URL, RELAY_PORT, CA, SHOTS } = process.env;
const SUBJECT = "会议通知"; // "meeting notice", sent as =?GB2312?B?u+HS6c2o1qo=?=

function smtplib() {
  const script = `
import smtplib, ssl, sys
msg = (b"From: alice@163.com\\r\\nTo: bob@163.com\\r\\nSubject: =?GB2312?B?u+HS6c2o1qo=?=\\r\\n"
       b"MIME-Version: 1.0\\r\\nContent-Type: text/plain; charset=GB2312\\r\\n"
       b"Content-Transfer-Encoding: base64\\r\\n\\r\\nxOO6w6OsysC956Oh\\r\\n")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20) as s:
    s.starttls(context=ssl.create_default_context(cafile=sys.argv[2]))
    s.login("alice@163.com", "ALICEAUTHCODE163")
    try:
        s.sendmail("alice@163.com", ["bob@163.com"], msg)
        print("sent")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["bob@163.com"]
        print(code, text.decode())
`;
  return execFileSync("python3", ["-c", script, RELAY_PORT, CA], { timeout: 30000 }).toString().trim();
}

function check(cond, what) {
  if (!cond) throw new Error("browser check failed: " + what);
  console.log("ok: " + what);
}

mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  await page.goto(WEB_URL);
  await page.waitForSelector("#live.on", { timeout: 15000 });
  // A mark that a reload would wipe.
  await page.evaluate(() => { window.__noReload = true; });

  check(smtplib() === "sent", "smtplib sent a message through the relay");
  const row = page.locator("#list .msg .subj", { hasText: SUBJECT });
  await row.first().waitFor({ timeout: 15000 });
  check(await page.evaluate(() => window.__noReload === true), "the message appeared without a reload");

  await row.first().click();
  await page.waitForSelector("h2#subject", { timeout: 10000 });
  check((await page.textContent("h2#subject")) === SUBJECT, "the GB2312 subject shows as " + SUBJECT);
  check((await page.textContent("pre#text")).includes("你好，世界！"), "the GB2312 body is decoded");
  await page.screenshot({ path: SHOTS + "/web-message.png" });

  await page.click("nav.tabs >> text=Transcript");
  await page.waitForSelector("#relay-transcript", { timeout: 10000 });
  const relay = await page.textContent("#relay-transcript");
  check(relay.includes("U> MAIL FROM:<alice@163.com>") && relay.includes("<redacted>") &&
        !relay.includes(Buffer.from("\0alice@163.com\0ALICEAUTHCODE163").toString("base64")),
        "the relay's two-hop transcript, AUTH redacted");
  check((await page.textContent("#upstream-transcript")).includes("S: 250 Mail OK queued as"),
        "the fake's transcript of the delivering session");
  await page.screenshot({ path: SHOTS + "/web-transcript.png" });

  await page.click("#tools-btn");
  await page.fill("#fault-163", "RCPT bob@163.com: 451 4.7.1 busy, once");
  await page.click("#add-fault-163");
  await page.locator(".faults code", { hasText: "451 4.7.1 busy" }).waitFor({ timeout: 10000 });
  await page.screenshot({ path: SHOTS + "/web-faults.png" });
  const refused = smtplib();
  check(refused === "451 4.7.1 busy", "the fault added from the page refused the next RCPT (" + refused + ")");
  check(smtplib() === "sent", "and only once");
  check(errors.length === 0, "no script error on the page (" + errors.join("; ") + ")");
} finally {
  await browser.close();
}
