//! A running fake upstream as its user holds it: its addresses and TLS files, what it
//! received, its transcripts, its faults and clock changed at run time, shutdown.

use super::*;

/// A running fake upstream. Dropping it does not stop the server: call [`Handle::shutdown`]
/// (after which the handle still answers `received()` and `transcripts()`). Clones are the
/// same server (the web page holds one).
#[derive(Clone)]
pub struct Handle {
    pub(super) shared: Arc<Shared>,
    pub(super) addr: SocketAddr,
    pub(super) tls_addr: Option<SocketAddr>,
    pub(super) shutdown: Arc<watch::Sender<bool>>,
    pub(super) tasks: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
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

    /// What the fake received of load run `run` (`Config::tally_load`): intact, corrupted,
    /// duplicated and distinct messages.
    pub fn load_tally(&self, run: u64) -> Option<crate::loadstamp::Tally> {
        self.shared
            .load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run)
    }

    /// Whether load runs are tallied ([`crate::Config::tally_load`]).
    pub fn tallies_load(&self) -> bool {
        self.shared.config.tally_load
    }

    /// Whether sessions are recorded ([`crate::Config::transcripts`]).
    pub fn keeps_transcripts(&self) -> bool {
        self.shared.config.transcripts
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

    /// The scripted faults in force, each with how many times its stage (and address) came
    /// up since it was set.
    pub fn faults(&self) -> Vec<(crate::faults::Fault, u64)> {
        self.shared.faults().list()
    }

    /// Adds a fault beside those in force (their counters go on); its index in
    /// [`Handle::faults`] is returned.
    pub fn add_fault(&self, fault: crate::faults::Fault) -> usize {
        self.edit_faults(|_| false, vec![fault]) - 1
    }

    /// Removes the fault at `index` in [`Handle::faults`]; false when there is none.
    pub fn remove_fault(&self, index: usize) -> bool {
        let before = self.shared.faults().list().len();
        index < before && self.edit_faults(|i| i == index, Vec::new()) < before
    }

    /// Removes every scripted fault.
    pub fn clear_faults(&self) {
        self.edit_faults(|_| true, Vec::new());
    }

    /// Applies an edit to the fault set under its lock; how many faults there are after it.
    fn edit_faults(&self, remove: impl Fn(usize) -> bool, add: Vec<crate::faults::Fault>) -> usize {
        let mut slot = self
            .shared
            .faults
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let next = slot.edited(remove, add, self.shared.now());
        let n = next.list().len();
        *slot = Arc::new(next);
        n
    }

    /// The persona's limits in force now.
    pub fn limits(&self) -> crate::persona::Limits {
        (*self.shared.limits()).clone()
    }

    /// Changes one limit while the server runs (`sender_per_15min`, `none` to lift it; the
    /// keys of [`crate::persona::Limits::set`]). The message size and the idle timeout are
    /// fixed at start: they are in the EHLO reply and in the sessions already open.
    pub fn set_limit(&self, key: &str, value: &str) -> Result<(), String> {
        if matches!(key, "max_message_size" | "idle_timeout_secs") {
            return Err(format!(
                "{key} is fixed when the server starts (it is in every EHLO reply and open session); restart with it changed"
            ));
        }
        let mut slot = self
            .shared
            .limits
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let mut next = (**slot).clone();
        next.set(key, value)?;
        *slot = Arc::new(next);
        Ok(())
    }

    /// Switches the persona's quotas and rate limits off (as `--no-limits`), or back on as
    /// configured at start; the size and per-message recipient limits stay either way.
    pub fn set_quotas(&self, on: bool) {
        let configured = &self.shared.config.persona.limits;
        let mut next = configured.clone();
        if !on {
            next.without_quotas();
        }
        let mut slot = self
            .shared
            .limits
            .write()
            .unwrap_or_else(|e| e.into_inner());
        next.max_recipients = slot.max_recipients;
        *slot = Arc::new(next);
    }

    /// Whether any quota or rate limit is on.
    pub fn quotas_on(&self) -> bool {
        let mut off = self.limits();
        off.without_quotas();
        off != self.limits()
    }

    /// Each message as it is accepted, from now on (a receiver that falls more than 1024
    /// messages behind is told how many it missed).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Received> {
        self.shared.arrivals.subscribe()
    }

    /// The transcript of session `id` (ended or open), if it is still kept.
    pub fn transcript(&self, id: u64) -> Option<Transcript> {
        let st = self.shared.state();
        if let Some(live) = st.open.get(&id) {
            return Some(live.lock().unwrap_or_else(|e| e.into_inner()).clone());
        }
        st.transcripts.iter().rev().find(|t| t.id == id).cloned()
    }

    /// Forgets the accepted message `id` and deletes its files (the delivered copies, their
    /// JSON, the raw DATA); false when the fake does not remember it.
    pub async fn delete(&self, id: &str) -> bool {
        let found = {
            let mut st = self.shared.state();
            let at = st.received.iter().position(|r| r.id == id);
            at.and_then(|i| st.received.remove(i))
        };
        match found {
            Some(r) => {
                store::remove_message(&r).await;
                true
            }
            None => false,
        }
    }

    /// Forgets every accepted message and deletes their files; how many there were.
    pub async fn delete_all(&self) -> usize {
        let all: Vec<Received> = self.shared.state().received.drain(..).collect();
        for r in &all {
            store::remove_message(r).await;
        }
        all.len()
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
