//! Store-and-forward mode: the durable queue ([`store`]), delivery from it with retries,
//! route back-off and bounces ([`deliver`]), and `smtp-relay queue` ([`admin`]).

pub mod admin;
pub mod deliver;
mod index;
pub mod journal;
pub mod store;
mod writer;
