//! The crate's test helpers, bound to a fake upstream's handle.

#![allow(dead_code, unused_imports)]

pub use fake_upstream::testing::{b64, config, normalize, start, temp_dir};
use fake_upstream::{Handle, testing};

pub struct Client;

impl Client {
    pub async fn connect(h: &Handle) -> testing::Client {
        testing::Client::connect(h.addr()).await
    }

    pub async fn connect_tls(h: &Handle) -> testing::Client {
        testing::Client::connect_tls(h.tls_addr().unwrap(), h.ca_pem(), "smtp.163.com").await
    }
}

pub fn tls_connector(h: &Handle) -> tokio_rustls::TlsConnector {
    testing::tls_connector(h.ca_pem())
}
