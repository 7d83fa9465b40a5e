//! Who may open a session: the per-IP session slot and trusted networks.

use super::*;
pub(super) use smtp_net::admission::IpSlot;

/// A session counted against its client's address while it lives (the count shared with
/// the fake upstream's: [`smtp_net::admission`]); `None` when the address already has
/// `max_sessions_per_ip` open.
pub(super) fn ip_slot(shared: &Shared, ip: IpAddr) -> Option<IpSlot> {
    let slot = shared.per_ip.enter(ip);
    (slot.count() as usize <= shared.config.max_sessions_per_ip).then_some(slot)
}

pub(super) fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}
