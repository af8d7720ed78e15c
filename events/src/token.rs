//! Consistency tokens: the log position of an accepted write.
//!
//! A write's token names the Kafka partition and offset its event was appended at. A read model
//! includes that write once the projector's stored offset for the partition has moved past it,
//! so "has the read model caught up with this token?" is one integer comparison. The text form,
//! `v1.{partition}.{offset}`, is opaque to clients; the prefix leaves room to change it.

use std::fmt;
use std::str::FromStr;

/// The log position of an accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsistencyToken {
    pub partition: i32,
    pub offset: i64,
}

/// A token that was not issued by this system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed consistency token")]
pub struct TokenError;

/// Partition numbers above this are not something a topic of ours has.
const MAX_PARTITION: i32 = 100_000;

impl ConsistencyToken {
    /// True when a read model whose next offset to apply on this partition is `next_offset`
    /// already includes this write.
    pub fn is_covered_by(&self, next_offset: i64) -> bool {
        next_offset > self.offset
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1.{}.{}", self.partition, self.offset)
    }
}

impl FromStr for ConsistencyToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("v1.").ok_or(TokenError)?;
        let (partition, offset) = rest.split_once('.').ok_or(TokenError)?;
        let digits =
            |x: &str| !x.is_empty() && x.len() <= 19 && x.bytes().all(|b| b.is_ascii_digit());
        if !digits(partition) || !digits(offset) {
            return Err(TokenError);
        }
        let partition: i32 = partition.parse().map_err(|_| TokenError)?;
        let offset: i64 = offset.parse().map_err(|_| TokenError)?;
        if partition > MAX_PARTITION {
            return Err(TokenError);
        }
        Ok(ConsistencyToken { partition, offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = ConsistencyToken {
            partition: 7,
            offset: 123_456,
        };
        assert_eq!(t.to_string(), "v1.7.123456");
        assert_eq!("v1.7.123456".parse::<ConsistencyToken>(), Ok(t));
    }

    #[test]
    fn rejects_what_we_never_issue() {
        for bad in [
            "",
            "v1",
            "v1.",
            "v1.1",
            "v1.1.",
            "v2.1.1",
            "v1.-1.5",
            "v1.1.-5",
            "v1.+1.5",
            "v1.1.5.6",
            "v1.1.99999999999999999999",
            "v1.100001.1",
            " v1.1.1",
            "v1.a.1",
        ] {
            assert_eq!(bad.parse::<ConsistencyToken>(), Err(TokenError), "{bad:?}");
        }
    }

    #[test]
    fn covered_once_the_stored_offset_moves_past_it() {
        let t = ConsistencyToken {
            partition: 0,
            offset: 10,
        };
        assert!(!t.is_covered_by(10));
        assert!(t.is_covered_by(11));
    }
}
