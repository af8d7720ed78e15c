//! The projector's progress notice: how the read side learns that the read model moved.
//!
//! After each committed batch the projector sends, on the PostgreSQL channel [`CHANNEL`] and
//! inside the batch's transaction (so it is delivered on commit, never for a rollback), a
//! [`ProgressNotice`] with the new next offset of every partition the batch advanced. The query
//! API's consistency waits listen for it. JSON: `{"topic": "...", "offsets": [[0, 42], ...]}`.

use serde::{Deserialize, Serialize};

/// The PostgreSQL `NOTIFY` channel.
pub const CHANNEL: &str = "projector_progress";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressNotice {
    pub topic: String,
    /// `(partition, next offset to project)` for each partition the batch advanced.
    pub offsets: Vec<(i32, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_topic_and_pairs() {
        let notice = ProgressNotice {
            topic: "t".into(),
            offsets: vec![(0, 42), (3, 7)],
        };
        let json = serde_json::to_string(&notice).expect("json");
        assert_eq!(json, r#"{"topic":"t","offsets":[[0,42],[3,7]]}"#);
        assert_eq!(
            serde_json::from_str::<ProgressNotice>(&json).expect("parses"),
            notice
        );
    }
}
