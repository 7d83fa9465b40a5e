//! A running fake upstream as its user holds it: its addresses and TLS files, what it
//! received, its transcripts, its faults and clock changed at run time, shutdown.

use super::*;

/// A running fake upstream. Dropping it does not stop the server: call [`Handle::shutdown`]
/// (after which the handle still answers `received()` and `transcripts()`).
pub struct Handle {
    pub(super) shared: Arc<Shared>,
    pub(super) addr: SocketAddr,
    pub(super) tls_addr: Option<SocketAddr>,
    pub(super) shutdown: watch::Sender<bool>,
    pub(super) tasks: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Handle {
    /// The plain (STARTTLS) listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The implicit-TLS listener's address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The CA certificate (PEM) that the server certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.shared.tls.ca_pem
    }

    pub fn ca_path(&self) -> &std::path::Path {
        &self.shared.tls.files.ca
    }

    /// The server's certificate (PEM), the first of its chain.
    pub fn cert_path(&self) -> &std::path::Path {
        &self.shared.tls.files.cert
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.shared.config.data_dir
    }

    pub fn users(&self) -> &[User] {
        &self.shared.config.users
    }

    /// The accounts allowed to send, as (lower-case address, authorization code): what a relay
    /// in front of this fake checks its clients against and delivers as.
    pub fn smtp_accounts(&self) -> Vec<(String, String)> {
        self.users()
            .iter()
            .filter(|u| u.smtp)
            .map(|u| (u.address.to_lowercase(), u.code.clone()))
            .collect()
    }

    pub fn persona_name(&self) -> &str {
        &self.shared.config.persona.name
    }

    /// The messages accepted so far, in order (the most recent `Config::history` of them).
    pub fn received(&self) -> Vec<Received> {
        self.shared.state().received.iter().cloned().collect()
    }

    /// How many messages were accepted in all.
    pub fn received_count(&self) -> u64 {
        self.shared.state().received_total
    }

    /// Waits until at least `n` messages were accepted, or `timeout` passed; returns what
    /// was received either way (`Err` on timeout).
    pub async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Received>, Vec<Received>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.received_notify.notified();
            if self.received_count() >= n as u64 {
                return Ok(self.received());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.received());
            }
        }
    }

    /// Transcripts of the sessions that ended, in the order they ended (the last 1000), then
    /// those still open as they stand now (`open` set), by connection; none when
    /// `Config::transcripts` is off. Every command, reply and DATA byte is in it as soon as
    /// the fake has read it, whether or not the sender ever closes its session.
    pub fn transcripts(&self) -> Vec<Transcript> {
        let st = self.shared.state();
        let mut all: Vec<Transcript> = st.transcripts.iter().cloned().collect();
        for live in st.open.values() {
            let t = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
            all.push(t);
        }
        all
    }

    /// Replaces the scripted faults while the server runs (their counters start from zero):
    /// what a long-lived fake shared by many scenarios, or a user at run time, needs.
    pub fn set_faults(&self, faults: Vec<crate::faults::Fault>) {
        let set = Arc::new(FaultSet::new_at(
            faults,
            self.shared.config.seed,
            self.shared.now(),
        ));
        *self
            .shared
            .faults
            .write()
            .unwrap_or_else(|e| e.into_inner()) = set;
    }

    /// Moves the fake's policy clock ahead: quotas refill, bans and `for` faults end as if
    /// `by` had passed (so that a test of 163's 15-minute quota takes no 15 minutes).
    pub fn advance_clock(&self, by: Duration) {
        self.shared
            .clock_ahead_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    /// How many lines and DATA chunks the transcripts have recorded so far: a number that
    /// changes while anyone talks to the fake (to wait for quiet).
    pub fn activity(&self) -> u64 {
        self.shared.activity.load(Ordering::Relaxed)
    }

    /// Connections open now, on every listener. A connection's transcript is among
    /// [`Handle::transcripts`] before it stops counting here.
    pub fn open_connections(&self) -> u32 {
        self.shared.per_ip.total()
    }

    /// Waits until no connection is open, at most `limit`; whether none is.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.open_connections() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Stops accepting, sends `421` to every session waiting for a command, and waits for
    /// the sessions to end (at most 5 seconds).
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}
