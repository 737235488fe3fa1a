//! New passwords and the SCRAM-SHA-256 verifier sent in their place.

use rand::Rng;
use rand::distr::Alphanumeric;

/// Length of a generated password: 40 alphanumerics carry about 238 bits.
pub const PASSWORD_LEN: usize = 40;
/// PostgreSQL's default `scram_iterations`.
pub const SCRAM_ITERATIONS: u32 = 4096;

/// A new password from a CSPRNG (`ThreadRng`: ChaCha12 seeded from the OS): letters and digits
/// only, so it survives every connection string and shell unquoted.
pub fn generate() -> String {
    rand::rng().sample_iter(&Alphanumeric).take(PASSWORD_LEN).map(char::from).collect()
}

/// The verifier PostgreSQL stores for `password` (`SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`),
/// with a fresh 16-byte salt: what `ALTER ROLE ... PASSWORD` is given, so
/// the plain text never reaches the server, its log or `pg_stat_statements`.
/// PBKDF2 with 4096 rounds: call it off the async threads.
pub fn scram_verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    pgdr_proxy::scram::Verifier::from_password(password, &salt, SCRAM_ITERATIONS).encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_alphanumeric() {
        let a = generate();
        let b = generate();
        assert!(a.len() >= 32 && a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn verifier_matches_an_independent_computation() {
        // Computed with Python's hashlib/hmac for password "pencil", salt
        // b"0123456789abcdef", 4096 iterations (PostgreSQL's format).
        let v = pgdr_proxy::scram::Verifier::from_password("pencil", b"0123456789abcdef", 4096).encode();
        assert_eq!(v, EXPECTED_PENCIL);
        let fresh = scram_verifier("pencil");
        assert!(fresh.starts_with("SCRAM-SHA-256$4096:") && !fresh.contains("pencil"));
        assert_ne!(fresh, scram_verifier("pencil"), "every verifier has its own salt");
    }

    const EXPECTED_PENCIL: &str = "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$nQpbZ77WudtqufPwikHXGRt6g2QJ4zns8bZLw273DRM=:jn2amWP1q1h+jgjy0YTO14S6/F02SV7taipOeB7ef20=";
}
