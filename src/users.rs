//! The relay's own users (auth mode `users`): an htpasswd-style file of `address:bcrypt-hash`
//! lines (`htpasswd -nbB address password` makes one). Clients authenticate against it; the
//! relay then authenticates upstream with its own configured credentials.

use std::collections::HashMap;
use std::path::Path;

/// A bcrypt hash that matches nothing, after its `$2b$NN$` prefix: with any cost in front it is
/// a well-formed hash that bcrypt verifies at that cost (and refuses).
const DUMMY_SALT_AND_HASH: &str = "7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z3ZR9tYhU6XFSB1n6x9Q3eWe";

/// bcrypt's lowest cost.
const MIN_COST: u32 = 4;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    /// Lower-cased address -> bcrypt hash.
    hashes: HashMap<String, String>,
    /// The highest cost in the file: every check costs as much as one hash of this cost, so
    /// that no answer's timing tells whether the user exists (or which cost their hash has).
    max_cost: u32,
}

/// The cost of a `$2b$NN$...` hash.
fn cost_of(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

fn dummy(cost: u32) -> String {
    format!("$2b${cost:02}${DUMMY_SALT_AND_HASH}")
}

impl Users {
    /// Parses `address:hash` lines; blank lines and `#` comments are skipped. `origin` names
    /// the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!(
                    "{origin}: line {}: expected address:bcrypt-hash",
                    n + 1
                ));
            };
            if !hash.starts_with("$2")
                || cost_of(hash).is_none_or(|c| !(MIN_COST..=31).contains(&c))
            {
                return Err(format!(
                    "{origin}: line {}: the password must be a bcrypt hash ($2a$/$2b$/$2y$, from htpasswd -B), not plain text",
                    n + 1
                ));
            }
            hashes.insert(user.trim().to_lowercase(), hash.to_string());
        }
        if hashes.is_empty() {
            return Err(format!("{origin}: no users"));
        }
        Ok(Users::with(hashes))
    }

    /// Users from addresses and plain passwords, hashed here (`up --queue` makes its users
    /// from the demo accounts so).
    pub fn from_passwords<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Users {
        let hashes = pairs
            .into_iter()
            .filter_map(|(user, password)| {
                let hash = bcrypt::hash(password, 8).ok()?;
                Some((user.to_lowercase(), hash))
            })
            .collect();
        Users::with(hashes)
    }

    fn with(hashes: HashMap<String, String>) -> Users {
        let max_cost = hashes
            .values()
            .filter_map(|h| cost_of(h))
            .max()
            .unwrap_or(MIN_COST);
        Users { hashes, max_cost }
    }

    pub fn load(path: &Path) -> Result<Users, String> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
        Users::parse(&text, &origin)
    }

    /// Whether `password` is `user`'s. Slow on purpose (bcrypt): call it off the async
    /// threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let mut ok = false;
        for (hash, real) in self.checks(user) {
            let matched = bcrypt::verify(password, &hash).unwrap_or(false);
            ok |= real && matched;
        }
        ok
    }

    /// The hashes one check verifies, each marked whether it is the user's own. Their work
    /// (2^cost each) always adds up to 2^max_cost: an unknown user verifies a dummy of the
    /// highest cost; a known user of cost c their own hash, then dummies of costs c ..
    /// max_cost-1 (2^c + 2^c + ... + 2^(max-1) = 2^max).
    fn checks(&self, user: &str) -> Vec<(String, bool)> {
        match self.hashes.get(&user.to_lowercase()) {
            None => vec![(dummy(self.max_cost), false)],
            Some(hash) => {
                let cost = cost_of(hash).unwrap_or(self.max_cost);
                std::iter::once((hash.clone(), true))
                    .chain((cost..self.max_cost).map(|c| (dummy(c), false)))
                    .collect()
            }
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_bcrypt_lines_and_refuses_plain_text() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Users::parse(
            &format!("# relay users\n\nClient@Example.com:{hash}\n"),
            "u",
        )
        .unwrap();
        assert!(users.verify("client@example.com", "s3cret"));
        assert!(!users.verify("client@example.com", "wrong"));
        assert!(!users.verify("nobody@example.com", "s3cret"));
        let e = Users::parse("a@b:plaintext\n", "users.htpasswd").unwrap_err();
        assert!(
            e.starts_with("users.htpasswd: line 1: the password must be a bcrypt hash"),
            "{e}"
        );
        assert_eq!(
            Users::parse("nocolon\n", "u").unwrap_err(),
            "u: line 1: expected address:bcrypt-hash"
        );
        assert_eq!(Users::parse("# none\n", "u").unwrap_err(), "u: no users");
    }

    #[test]
    fn the_dummy_hash_is_a_valid_hash_at_any_cost() {
        for cost in [4, 5, 10] {
            assert!(matches!(bcrypt::verify("x", &dummy(cost)), Ok(false)));
        }
    }

    /// Every check does the same work whatever the user and whatever costs the file mixes
    /// (issue 11: a cost-12 file answered a known user 0.2 s after an unknown one).
    #[test]
    fn every_check_costs_the_same_work() {
        let low = bcrypt::hash("a", 4).unwrap();
        let high = bcrypt::hash("b", 6).unwrap();
        let users = Users::parse(&format!("low@x:{low}\nhigh@x:{high}\n"), "u").unwrap();
        let work = |user: &str| -> u64 {
            users
                .checks(user)
                .iter()
                .map(|(h, _)| 1u64 << cost_of(h).unwrap())
                .sum()
        };
        assert_eq!(work("low@x"), 1 << 6);
        assert_eq!(work("high@x"), 1 << 6);
        assert_eq!(work("nobody@x"), 1 << 6);
        assert!(users.verify("low@x", "a") && users.verify("high@x", "b"));
        assert!(!users.verify("low@x", "b") && !users.verify("nobody@x", "a"));
    }
}
