//! One set of fake upstreams shared by many scenarios (`--shared-upstreams`): each
//! scenario's messages told apart by a token header, its window of the fakes' records.

use super::*;

/// The header line the runner puts first in every message it sends to another relay:
/// `X-Scenario-Token: <run>-<index> <name>`. It names the scenario (and the run) that sent a
/// message, whenever and however the relay delivers it.
pub(super) const TOKEN_HEADER: &str = "X-Scenario-Token: ";

/// The upstream shared by every scenario of a run against another relay, and each scenario's
/// window on it.
pub(super) struct SharedUpstream {
    pub(super) fake: Arc<fake_upstream::Handle>,
    /// How it is set up: a scenario needing anything else (but faults) is skipped.
    pub(super) upstream: Upstream,
    /// Tells this run's tokens from an earlier run's.
    pub(super) run: String,
    pub(super) names: Vec<String>,
    /// Per scenario that ran: its index, and the fake's received count when it started and
    /// when its checks ran.
    pub(super) windows: std::sync::Mutex<Vec<(usize, u64, u64)>>,
}

impl SharedUpstream {
    pub(super) async fn start(
        scenarios: &[Scenario],
        opts: &Options,
        tls: &TlsMaterial,
        listen: SocketAddr,
    ) -> Result<SharedUpstream, String> {
        let upstream = Upstream::new("sink");
        let dir = opts.work_dir.join("upstream");
        let _ = std::fs::remove_dir_all(&dir);
        let fake = start_fake(&upstream, &opts.work_dir, dir, tls, Some(listen), opts.seed).await?;
        let run = {
            use std::hash::BuildHasher;
            let random = std::collections::hash_map::RandomState::new();
            format!("{:08x}", random.hash_one(std::process::id()) as u32)
        };
        Ok(SharedUpstream {
            fake: Arc::new(fake),
            upstream,
            run,
            names: scenarios.iter().map(|s| s.name.clone()).collect(),
            windows: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// What scenario `index`'s messages begin with.
    pub(super) fn header(&self, index: usize) -> String {
        format!(
            "{TOKEN_HEADER}{}-{index} {}\r\n",
            self.run, self.names[index]
        )
    }

    /// Whose token `content` carries: `Some(index)`, or `None` for no token of this run.
    pub(super) fn owner(&self, content: &[u8]) -> Option<usize> {
        let needle = format!("{TOKEN_HEADER}{}-", self.run);
        let at = memchr::memmem::find(content, needle.as_bytes())? + needle.len();
        let digits: String = content[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        digits.parse().ok()
    }

    /// Waits until the fake heard nothing for `quiet` (at most `limit`).
    pub(super) async fn quiet(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = (self.fake.activity(), Instant::now());
        while Instant::now() < deadline && last.1.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let a = self.fake.activity();
            if a != last.0 {
                last = (a, Instant::now());
            }
        }
    }

    /// Every received message with its position in the fake's count.
    pub(super) fn received(&self) -> Vec<(u64, fake_upstream::Received)> {
        let all = self.fake.received();
        let first = self.fake.received_count() - all.len() as u64;
        (first..).zip(all).collect()
    }

    /// The messages that arrived outside their scenario's window, or in none.
    pub(super) fn strays(&self) -> Vec<Stray> {
        let windows = self
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let during = |n: u64| windows.iter().find(|(_, from, to)| n >= *from && n < *to);
        let mut strays = Vec::new();
        for (n, r) in self.received() {
            let what = format!("a message from {} to {}", r.mail_from, r.rcpt_to.join(", "));
            let came = match during(n) {
                Some((i, _, _)) => format!("during {}", self.names[*i]),
                None => "when no scenario was running (between two, or after the last)".to_string(),
            };
            match (self.owner(&r.content), during(n)) {
                (Some(owner), Some((i, _, _))) if owner == *i => {}
                (Some(owner), _) => strays.push(Stray {
                    what: format!(
                        "{what} sent by {} arrived late, {came}",
                        self.names.get(owner).map_or("?", String::as_str)
                    ),
                    unattributed: false,
                }),
                (None, Some(_)) => {}
                (None, None) => strays.push(Stray {
                    what: format!(
                        "{what} that carries no scenario's token arrived {came}: no check saw it"
                    ),
                    unattributed: true,
                }),
            }
        }
        strays
    }
}

/// A scenario's view of the shared upstream.
pub(super) struct Window {
    pub(super) shared: Arc<SharedUpstream>,
    pub(super) index: usize,
    /// When the scenario started, and the fake's received count then.
    pub(super) start: Instant,
    pub(super) from: u64,
}

impl Window {
    /// The scenario is over: the shared fake's faults cleared, its records up to now noted as
    /// this scenario's.
    pub(super) fn close(&self) {
        self.shared.fake.set_faults(Vec::new());
        let to = self.shared.fake.received_count();
        self.shared
            .windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((self.index, self.from, to));
    }

    /// Its messages: those with its token, and those with none that came during it. The
    /// token line is taken out (the checks compare what the scenario itself sent).
    pub(super) fn received(&self) -> Vec<fake_upstream::Received> {
        self.shared
            .received()
            .into_iter()
            .filter(|(n, r)| match self.shared.owner(&r.content) {
                Some(owner) => owner == self.index,
                None => *n >= self.from,
            })
            .map(|(_, mut r)| {
                r.content = Arc::new(without_token(&r.content));
                r
            })
            .collect()
    }

    /// The upstream sessions as this scenario saw them: the lines since it started, but for
    /// the transactions that carried another scenario's message; its DATA phases.
    pub(super) fn transcripts(&self) -> Vec<fake_upstream::Transcript> {
        let mut out = Vec::new();
        for t in self.shared.fake.transcripts() {
            let mut keep: Vec<bool> = t.times.iter().map(|at| *at >= self.start).collect();
            let mut data = Vec::new();
            for d in &t.data {
                let owner = self.shared.owner(&d.raw);
                let mine = match owner {
                    Some(o) => o == self.index,
                    None => d.at.is_some_and(|at| at >= self.start),
                };
                if mine {
                    data.push(d.clone());
                } else if owner.is_some() {
                    // The MAIL that began its transaction up to the reply that ended it.
                    let begin = t.lines[..d.line.min(t.lines.len())]
                        .iter()
                        .rposition(|l| l.to_ascii_uppercase().starts_with("C: MAIL"))
                        .unwrap_or(d.line);
                    let end = t.lines[d.line.min(t.lines.len())..]
                        .iter()
                        .position(|l| l.starts_with("S: "))
                        .map_or(t.lines.len(), |e| d.line + e + 1);
                    for k in keep.iter_mut().take(end).skip(begin) {
                        *k = false;
                    }
                }
            }
            if !keep.contains(&true) && data.is_empty() {
                continue;
            }
            let mut mine = t.clone();
            (mine.lines, mine.times) = t
                .lines
                .iter()
                .zip(&t.times)
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|((l, at), _)| (l.clone(), *at))
                .unzip();
            mine.data = data;
            out.push(mine);
        }
        out
    }
}

/// `content` without the runner's token line.
pub(super) fn without_token(content: &[u8]) -> Vec<u8> {
    let at = if content.starts_with(TOKEN_HEADER.as_bytes()) {
        Some(0)
    } else {
        memchr::memmem::find(content, format!("\n{TOKEN_HEADER}").as_bytes()).map(|i| i + 1)
    };
    match at {
        Some(i) => {
            let end = memchr::memchr(b'\n', &content[i..]).map_or(content.len(), |e| i + e + 1);
            [&content[..i], &content[end..]].concat()
        }
        None => content.to_vec(),
    }
}
