//! Store-and-forward mode (in progress): the durable queue ([`store`]) and delivery from it
//! with retries, route back-off and bounces ([`deliver`]). Wiring into the relay, the admin
//! commands and the metrics come next; live mode is unchanged.

pub mod deliver;
pub mod store;
