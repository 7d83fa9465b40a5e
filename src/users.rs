//! The relay's own users (auth mode `users`): an htpasswd-style file of `address:bcrypt-hash`
//! lines (`htpasswd -nbB address password` makes one). Clients authenticate against it; the
//! relay then authenticates upstream with its own configured credentials.

use std::collections::HashMap;
use std::path::Path;

/// A bcrypt hash that matches nothing, verified for unknown users so that an unknown address
/// costs the same time as a wrong password.
const DUMMY_HASH: &str = "$2b$10$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z3ZR9tYhU6XFSB1n6x9Q3eWe";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    /// Lower-cased address -> bcrypt hash.
    hashes: HashMap<String, String>,
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
            if !hash.starts_with("$2") {
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
        Ok(Users { hashes })
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
        Users { hashes }
    }

    pub fn load(path: &Path) -> Result<Users, String> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: {e}"))?;
        Users::parse(&text, &origin)
    }

    /// Whether `password` is `user`'s. Slow on purpose (bcrypt): call it off the async
    /// threads.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.hashes.get(&user.to_lowercase()) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(password, DUMMY_HASH);
                false
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
    fn the_dummy_hash_is_a_valid_hash() {
        assert!(bcrypt::verify("x", DUMMY_HASH).is_ok());
    }
}
