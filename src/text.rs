//! Echoing what a client or a file sent, safely: [`clip`] bounds how much of it reaches an
//! error message, a status or a log line. Any thread; no state.
//!
//! A 1 MB model name or a 3 MB kill-switch reason must not become a 1 MB log line or a status
//! larger than the client's message limit; an 85 MB refusal must not break `ListModels`.

use std::borrow::Cow;
use std::fmt;

/// Most characters of client- or file-supplied text echoed into one message.
pub const MAX_ECHO_CHARS: usize = 160;

/// `s` as it may be echoed: whole when short, else its first [`MAX_ECHO_CHARS`] characters and
/// how long it really was. Control characters are escaped either way, so a log line stays one
/// line.
pub fn clip(s: &str) -> Clipped<'_> {
    Clipped(s, MAX_ECHO_CHARS)
}

/// [`clip`] with another limit.
pub fn clip_to(s: &str, max_chars: usize) -> Clipped<'_> {
    Clipped(s, max_chars)
}

/// Text bounded for echoing (see [`clip`]); formats without allocating.
#[derive(Clone, Copy, Debug)]
pub struct Clipped<'a>(&'a str, usize);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, max) = (self.0, self.1);
        let mut shown = 0;
        for c in s.chars().take(max) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?
            } else {
                write!(f, "{c}")?
            }
            shown += c.len_utf8();
        }
        if shown < s.len() {
            write!(f, "… ({} bytes in all)", s.len())?;
        }
        Ok(())
    }
}

impl Clipped<'_> {
    /// The clipped text as a string (borrowed when nothing was cut or escaped).
    pub fn to_cow(&self) -> Cow<'_, str> {
        if self.0.len() <= self.1 && !self.0.chars().any(char::is_control) {
            Cow::Borrowed(self.0)
        } else {
            Cow::Owned(self.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_whole_and_long_text_says_its_length() {
        assert_eq!(clip("quantd-mlp").to_string(), "quantd-mlp");
        let long = "x".repeat(1_000_000);
        let c = clip(&long).to_string();
        assert!(c.len() < 200, "{}", c.len());
        assert!(c.ends_with("… (1000000 bytes in all)"));
        assert_eq!(clip_to("ab\ncd", 10).to_string(), "ab\\ncd");
        assert_eq!(clip_to("ééé", 2).to_string(), "éé… (6 bytes in all)");
    }
}
