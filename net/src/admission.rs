//! Sessions open per client address: a slot is counted while it lives, so a session that
//! ends by any path (a reply, an error, a panic unwinding) gives its place back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The open sessions of each client address.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

/// One session counted against its client's address until dropped.
#[derive(Debug)]
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
    count: u32,
}

impl PerIp {
    /// Counts a new session from `ip`. The slot says how many are open from it, this one
    /// included: the caller refuses the session when that is over its limit (dropping the
    /// slot gives it back).
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> IpSlot {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        *n += 1;
        IpSlot {
            owner: self.clone(),
            ip,
            count: *n,
        }
    }

    /// Sessions open from every address together.
    pub fn total(&self) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.values().sum()
    }
}

impl IpSlot {
    /// How many sessions were open from this address when this one came, itself included.
    pub fn count(&self) -> u32 {
        self.count
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_counts_while_it_lives() {
        let per_ip = Arc::new(PerIp::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "::1".parse().unwrap());
        let first = per_ip.enter(a);
        let second = per_ip.enter(a);
        let other = per_ip.enter(b);
        assert_eq!((first.count(), second.count(), other.count()), (1, 2, 1));
        assert_eq!(per_ip.total(), 3);
        drop(second);
        assert_eq!(
            per_ip.enter(a).count(),
            2,
            "the dropped slot was given back"
        );
        drop((first, other));
        assert_eq!(per_ip.total(), 0);
    }
}
