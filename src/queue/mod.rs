//! Store-and-forward mode (in progress): the durable queue ([`store`]). The delivery
//! scheduler, retries, bounces and the admin commands come next; live mode is unchanged.

pub mod store;
