//! AUTH from the client: checked against the relay's own users, or (pass-through) by the
//! upstream with the client's credentials, behind the guard that keeps a guessing client
//! from getting the relay's address banned.

use super::*;

impl Session {
    pub(super) async fn authenticate(&mut self, c: Credentials) -> Verdict {
        let verdict = match &self.shared.config.auth {
            AuthMode::Users(users) => {
                let (users, user, secret) = (users.clone(), c.username.clone(), c.secret.clone());
                let ok = tokio::task::spawn_blocking(move || users.verify(&user, &secret))
                    .await
                    .unwrap_or(false);
                if ok {
                    Verdict::Accept
                } else {
                    Verdict::Reply(Reply::new(
                        535,
                        (5, 7, 8),
                        "Authentication credentials invalid",
                    ))
                }
            }
            _ => self.authenticate_upstream(c.clone()).await,
        };
        let code = match &verdict {
            Verdict::Accept => 235,
            Verdict::Reply(r) => r.code,
        };
        tracing::info!(session = self.id, user = %c.username, reply = code, "auth");
        if code / 100 == 5 {
            tokio::time::sleep(self.shared.config.auth_failure_delay).await;
        }
        verdict
    }

    pub(super) async fn authenticate_upstream(&mut self, c: Credentials) -> Verdict {
        use crate::auth_guard::{Admission, Refusal};
        let mut config = self.shared.config.upstream.clone();
        let shared = self.shared.clone();
        let guard = &shared.auth_guard;
        let (ip, upstream) = (self.peer.ip(), config.name.clone());
        let (admission, wait) = guard.admit(Instant::now(), ip, &upstream, &c.username, &c.secret);
        if let Admission::Refuse(refusal) = admission {
            if refusal == Refusal::KnownBad {
                guard.failed(Instant::now(), ip, &upstream, &c.username, &c.secret, false);
            }
            self.shared.metrics.auth_refused(refusal.name());
            tracing::info!(
                session = self.id,
                peer = %self.peer,
                user = %c.username,
                reason = refusal.name(),
                "auth refused without asking the upstream"
            );
            let reply = refusal.reply(&upstream, wait);
            self.note(format!("    * not asked upstream: {}", refusal.name()));
            return Verdict::Reply(reply);
        }
        config.credentials = Some(c.clone());
        // Under the default route's cap like any upstream session (passthrough sessions are
        // not kept for others: only a slot will do).
        let slot = match shared.cap(RouteId::DEFAULT) {
            Some(cap) => {
                let granted = cap
                    .wait(
                        &upstream,
                        shared.config.upstream_session_wait,
                        || async { None::<std::convert::Infallible> },
                        |_| crate::metrics::Metrics::inc(&shared.metrics.upstream_session_waits),
                    )
                    .await;
                match granted {
                    Ok(Granted::Slot(slot)) => Some(slot),
                    Ok(Granted::Kept(never)) => match never {},
                    Err(e) => {
                        crate::metrics::Metrics::inc(&shared.metrics.upstream_busy);
                        self.note(format!("    * upstream busy: {e}"));
                        return Verdict::Reply(e.client_reply());
                    }
                }
            }
            None => None,
        };
        match Upstream::connect(&config).await.map(|mut up| {
            if let Some(slot) = slot {
                up.hold(slot);
            }
            up
        }) {
            Err(e) if self.refuses_the_relay(&e) => {
                self.note(format!("    * upstream failure: {e}"));
                let reply = e.reply().cloned().unwrap_or_else(|| e.client_reply());
                guard.relay_refused(Instant::now(), &upstream, reply.clone());
                let pause = guard.limits().relay_refused_pause;
                Verdict::Reply(Refusal::RelayRefused(reply).reply(&upstream, pause))
            }
            Err(UpstreamError::AuthRejected { reply, .. })
                if reply.severity() == smtp_wire::Severity::Permanent =>
            {
                self.note(format!("    * upstream refused the credentials: {reply}"));
                guard.failed(Instant::now(), ip, &upstream, &c.username, &c.secret, true);
                Verdict::Reply(reply)
            }
            Ok(up) => {
                guard.succeeded(ip);
                self.shared.learn(RouteId::DEFAULT, up.capabilities());
                if let Some(old) = self.legs[RouteId::DEFAULT].set_upstream(up) {
                    old.quit().await;
                }
                self.credentials = Some(Box::new(c));
                // The upstream's own success words (163: `235 Authentication successful`).
                match self.legs[RouteId::DEFAULT]
                    .upstream()
                    .and_then(Upstream::auth_reply)
                {
                    Some(r) if r.code == 235 => Verdict::Reply(r.clone()),
                    _ => Verdict::Accept,
                }
            }
            // The upstream's own verdict, verbatim: the credentials are the client's.
            Err(UpstreamError::AuthRejected { reply, .. }) => {
                self.note(format!("    * upstream refused the credentials: {reply}"));
                Verdict::Reply(reply)
            }
            Err(e) => {
                self.note(format!("    * upstream failure: {e}"));
                Verdict::Reply(e.client_reply())
            }
        }
    }

    /// Whether `e` is an upstream refusing the relay's own address; if so it is logged as an
    /// error naming the upstream and counted in the metrics.
    pub(super) fn refuses_the_relay(&self, e: &UpstreamError) -> bool {
        let refused = match e {
            UpstreamError::Refused {
                phase: crate::upstream::Phase::Greeting,
                reply,
                ..
            } => crate::auth_guard::refuses_the_relay(reply, true),
            UpstreamError::AuthRejected { reply, .. } | UpstreamError::Refused { reply, .. } => {
                crate::auth_guard::refuses_the_relay(reply, false)
            }
            _ => false,
        };
        if refused {
            crate::metrics::Metrics::inc(&self.shared.metrics.upstream_refused_relay);
            tracing::error!(
                session = self.id,
                upstream = e.upstream(),
                error = %e,
                "the upstream refuses the relay itself: no client can send through it until it lifts this"
            );
        }
        refused
    }
}
