//! How long each string field of a write's body may be, and how its length is counted: the
//! bounds that the field rules enforce and the request body schemas state.
//!
//! `display_name`, `bio` and `title` count Unicode scalar values (`chars`); the post `body`
//! counts UTF-8 bytes. No string may hold U+0000, which PostgreSQL text cannot store.

/// How a string field's length is measured and bounded.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    Chars { min: usize, max: usize },
    Bytes { min: usize, max: usize },
}

pub const DISPLAY_NAME: Length = Length::Chars { min: 1, max: 100 };
pub const BIO: Length = Length::Chars { min: 0, max: 1000 };
pub const TITLE: Length = Length::Chars { min: 1, max: 200 };
pub const POST_BODY: Length = Length::Bytes { min: 1, max: 16384 };

impl Length {
    /// Checks a string field's length, and that it holds no NUL: PostgreSQL text cannot store
    /// U+0000, so such a write would be accepted here and never be decided.
    pub fn check(self, value: &str) -> Result<(), String> {
        if value.contains('\0') {
            return Err("must not contain the NUL character (U+0000)".to_owned());
        }
        let (len, min, max, unit) = match self {
            Length::Chars { min, max } => (value.chars().count(), min, max, "characters"),
            Length::Bytes { min, max } => (value.len(), min, max, "bytes (UTF-8)"),
        };
        if len < min || len > max {
            let bounds = if min == 0 {
                format!("at most {max} {unit}")
            } else {
                format!("{min} to {max} {unit}")
            };
            return Err(format!("must be {bounds}, got {len}"));
        }
        Ok(())
    }
}
