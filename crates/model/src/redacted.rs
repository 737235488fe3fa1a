//! [`Redacted`]: a password or token held in memory that never shows itself.

use std::fmt;

/// A secret value (password, bearer token, key). `Debug` and `Display`
/// print `***`, so a secret inside a struct that derives `Debug`, an error
/// message or a log line stays hidden; [`Redacted::expose`] is the one way
/// to the value, to be called where it is sent or used.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Redacted(String);

impl Redacted {
    pub fn new(value: impl Into<String>) -> Redacted {
        Redacted(value.into())
    }

    /// The value itself: for the wire, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Redacted {
    fn from(s: String) -> Redacted {
        Redacted(s)
    }
}

impl From<&str> for Redacted {
    fn from(s: &str) -> Redacted {
        Redacted(s.to_owned())
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: Redacted,
            password: Option<Redacted>,
        }
        let h = Holder { token: "s3cr3t-token".into(), password: Some("hunter2".into()) };
        let shown = format!("{h:?} {h:#?} {} {}", h.token, h.token.clone());
        assert!(!shown.contains("s3cr3t") && !shown.contains("hunter2"), "{shown}");
        assert_eq!(h.token.expose(), "s3cr3t-token");
    }
}
