//! The bot token: kept out of every `Debug` and log line.

use std::fmt;

/// A bot token. Its `Debug` and `Display` never show it; only
/// [`Token::expose`] does, for the places that must send it.
///
/// The `Bot ` prefix is taken off when the token is made, whether it came
/// from the configuration or from a client's IDENTIFY, so that tokens
/// written either way compare equal.
///
/// ```
/// use shard_pool::Token;
///
/// let token = Token::new("Bot abc.def");
/// assert_eq!(token.expose(), "abc.def");
/// assert!(token.matches("abc.def") && token.matches("Bot abc.def"));
/// assert_eq!(format!("{token:?}"), "Token(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token `text`, without its `Bot ` prefix and surrounding
    /// whitespace.
    #[must_use]
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let trimmed = text.trim();
        let bare = trimmed.strip_prefix("Bot ").unwrap_or(trimmed).trim_start();
        Self(bare.to_owned())
    }

    /// The token itself, for the requests that must carry it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the token a client presented (with or without `Bot `) is
    /// this one, in time that depends only on the lengths.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        let presented = presented.strip_prefix("Bot ").unwrap_or(presented);
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        let mut difference = u8::from(a.len() != b.len());
        for (x, y) in a.iter().zip(b) {
            difference |= x ^ y;
        }
        difference == 0
    }

    /// Whether no token was given.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Token {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for Token {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_never_matters_and_nothing_prints_it() {
        let configured = Token::new("Bot secret.token");
        for presented in ["secret.token", "Bot secret.token"] {
            assert!(configured.matches(presented), "{presented}");
            assert!(Token::new(presented).matches("Bot secret.token"));
        }
        assert!(!configured.matches("secret.tokeN"));
        assert!(!configured.matches("secret.token2"));
        assert!(!configured.matches(""));
        for shown in [format!("{configured:?}"), format!("{configured}")] {
            assert!(!shown.contains("secret"), "{shown}");
        }
    }
}
