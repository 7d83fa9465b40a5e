//! Where a load run puts the fake upstream's faults and reads its tally of the run's
//! messages: a fake in this process (`--self`), or a fake's HTTP API (`--fake-api`, the page
//! of `fake-upstream` or `smtp-relay up`) behind any relay.

use std::time::Duration;

use fake_upstream::Fault;
use fake_upstream::faults::fault_text;
use fake_upstream::loadstamp::Tally;

/// Where the faults are set.
pub enum FaultControl {
    /// A fake upstream in this process (`--self`).
    Local(fake_upstream::Handle),
    /// A fake upstream's HTTP API, on its first server or the one named.
    Api(FakeApi),
}

/// A fake upstream's HTTP API.
pub struct FakeApi {
    base: String,
    token: Option<String>,
    server: Option<String>,
    client: reqwest::Client,
}

impl FakeApi {
    /// A request to `path` with the server and the token the user gave.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(s) = &self.server {
            r = r.query(&[("server", s)]);
        }
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends `r`; an error names the API and `what` was being done.
    async fn send(
        &self,
        what: &str,
        r: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, String> {
        r.send()
            .await
            .map_err(|e| format!("--fake-api {}: {what}: {e}", self.base))
    }

    fn status(&self, what: &str, r: &reqwest::Response) -> Result<(), String> {
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "--fake-api {}: {what}: HTTP {}",
                self.base,
                r.status()
            ))
        }
    }
}

impl FaultControl {
    /// The fake's API at `base` (`http://HOST:PORT`, with or without a trailing `/`).
    pub fn api(base: &str, token: Option<String>, server: Option<String>) -> FaultControl {
        FaultControl::Api(FakeApi {
            base: base.trim_end_matches('/').to_string(),
            token,
            server,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
        })
    }

    /// Replaces the fake's scripted faults with `faults`.
    pub async fn set(&self, faults: &[Fault]) -> Result<(), String> {
        let api = match self {
            FaultControl::Local(h) => {
                h.set_faults(faults.to_vec());
                return Ok(());
            }
            FaultControl::Api(api) => api,
        };
        let what = "clearing the faults";
        let r = api
            .send(what, api.request(reqwest::Method::DELETE, "/api/v1/faults"))
            .await?;
        api.status(what, &r)?;
        for f in faults {
            let text = fault_text(f);
            let what = format!("adding {text:?}");
            let req = api
                .request(reqwest::Method::POST, "/api/v1/faults")
                .json(&serde_json::json!({ "fault": text }));
            let r = api.send(&what, req).await?;
            api.status(&what, &r)?;
        }
        Ok(())
    }

    /// What the fake received of load run `run` (its tally of stamped messages), when it
    /// tallies them and has seen the run.
    pub async fn tally(&self, run: u64) -> Result<Option<Tally>, String> {
        let api = match self {
            FaultControl::Local(h) => return Ok(h.load_tally(run)),
            FaultControl::Api(api) => api,
        };
        let what = "the load tally";
        let path = format!("/api/v1/load/{run:016x}");
        let r = api
            .send(what, api.request(reqwest::Method::GET, &path))
            .await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        api.status(what, &r)?;
        let v: serde_json::Value = r
            .json()
            .await
            .map_err(|e| format!("--fake-api {}: {what}: {e}", api.base))?;
        serde_json::from_value(v["tally"].clone())
            .map(Some)
            .map_err(|e| format!("--fake-api {}: {what}: {e}", api.base))
    }
}
