//! Client authentication material: SCRAM-SHA-256 verifiers for the static `[[clients]]`.
//! A plain password is turned into a verifier once, at load, so no login re-runs PBKDF2 on
//! rotagate's side. The exchange itself is pgwire's SCRAM server state machine.

use crate::config::{ClientSecret, ClientUser};
use pgwire::api::auth::sasl::scram::ScramSecret;
use std::collections::HashMap;

pub use crate::crypto::scram::{Verifier, hash_password, parse_verifier};

/// The pgwire secret for one exchange (it wants owned key material).
pub fn pgwire_secret(v: &Verifier) -> ScramSecret {
    ScramSecret::Verifier {
        salt: v.salt.clone(),
        iterations: v.iterations,
        stored_key: v.stored_key().to_vec(),
        server_key: v.server_key().to_vec(),
    }
}

/// The client logins rotagate accepts, by user name.
#[derive(Debug, Default)]
pub struct ClientAuth {
    users: HashMap<String, Verifier>,
    /// Salt seed for the mock exchange with unknown users (so they look like known ones).
    mock_seed: [u8; 16],
    /// The mock exchange's iteration count and salt length: the configured verifiers' most
    /// common ones, so an unknown user's answer cannot be told from a known user's.
    mock_shape: (usize, usize),
    /// Clients limited to some databases (`[[clients]] databases`); the others may open any.
    limited: HashMap<String, Vec<String>>,
    /// `[[clients]] max_connections`, by user.
    caps: HashMap<String, u32>,
}

impl ClientAuth {
    pub fn from_config(clients: &[ClientUser]) -> Self {
        let users = clients
            .iter()
            .filter_map(|c| {
                let v = match &c.secret {
                    ClientSecret::Password(p) => parse_verifier(&hash_password(p.expose())),
                    ClientSecret::Scram(s) => parse_verifier(s.expose()),
                };
                v.map(|v| (c.user.clone(), v))
            })
            .collect();
        let limited = clients
            .iter()
            .filter_map(|c| Some((c.user.clone(), c.databases.clone()?)))
            .collect();
        let caps = clients
            .iter()
            .filter_map(|c| Some((c.user.clone(), c.max_connections?)))
            .collect();
        Self {
            mock_shape: most_common_shape(&users),
            users,
            mock_seed: rand::random(),
            limited,
            caps,
        }
    }

    /// `user`'s own cap on sessions open at once, if it has one.
    pub fn cap(&self, user: &str) -> Option<u32> {
        self.caps.get(user).copied()
    }

    /// Whether `user` may open `database` (both configured).
    pub fn may_open(&self, user: &str, database: &str) -> bool {
        self.limited
            .get(user)
            .is_none_or(|dbs| dbs.iter().any(|d| d == database))
    }

    pub fn get(&self, user: &str) -> Option<&Verifier> {
        self.users.get(user)
    }

    /// A verifier no password matches, with a stable per-user salt: PostgreSQL's mock auth.
    pub fn mock(&self, user: &str) -> ScramSecret {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.mock_seed);
        ctx.update(user.as_bytes());
        let (iterations, salt_len) = self.mock_shape;
        let digest = ctx.finish();
        let salt = digest.as_ref()[..salt_len.min(32)].to_vec();
        let key: [u8; 32] = rand::random();
        ScramSecret::Verifier {
            salt,
            iterations,
            stored_key: key.to_vec(),
            server_key: key.to_vec(),
        }
    }
}

/// The (iterations, salt length) most verifiers have (the larger on a tie); PostgreSQL's
/// defaults, 4096 and 16, when there are none.
fn most_common_shape(users: &HashMap<String, Verifier>) -> (usize, usize) {
    let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
    for v in users.values() {
        *counts.entry((v.iterations, v.salt.len())).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(shape, n)| (n, shape))
        .map(|(shape, _)| shape)
        .unwrap_or((4096, 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_password_output_parses_back() {
        let v = hash_password("pw");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        let parsed = parse_verifier(&v).unwrap();
        assert_eq!(parsed.iterations, 4096);
        assert_eq!(format!("{parsed:?}"), "Verifier(***)");
    }

    #[test]
    fn rejects_malformed_verifiers() {
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:c2FsdA==$a:b",
            "SCRAM-SHA-256$4096:c2FsdA==$YQ==:YQ==",
        ] {
            assert!(parse_verifier(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_mock_exchange_has_the_configured_verifiers_shape() {
        use crate::config::{ClientSecret, ClientUser};
        use crate::crypto::SecretString;
        let v = "SCRAM-SHA-256$600000:c2FsdHNhbHRzYWx0c2FsdA==$\
                 1gAsisUw2W7wV4O5xBtQ2D6koNfrA4nQaD8KtO1wYVk=:\
                 U6j5Lr7wD8CNK897Ng7JR+MybPQjzl80GoLa41Yn2+w=";
        let users: Vec<ClientUser> = ["a", "b"]
            .iter()
            .map(|u| ClientUser {
                user: (*u).into(),
                secret: ClientSecret::Scram(SecretString::new(v.to_owned())),
                databases: None,
                max_connections: None,
            })
            .collect();
        let auth = ClientAuth::from_config(&users);
        let known = auth.get("a").unwrap();
        match auth.mock("nobody") {
            ScramSecret::Verifier {
                iterations, salt, ..
            } => {
                assert_eq!(iterations, 600_000);
                assert_eq!(salt.len(), known.salt.len());
            }
            _ => panic!("a verifier"),
        }
    }
}
