//! The projector's progress notice: how the read side learns that the read model moved.
//!
//! After each committed batch the projector sends, on the PostgreSQL channel [`CHANNEL`] and
//! inside the batch's transaction (so it is delivered on commit, never for a rollback), a
//! [`ProgressNotice`] with the new next offset of every partition the batch advanced. The query
//! API's consistency waits listen for it. JSON: `{"topic": "...", "offsets": [[0, 42], ...],
//! "generation": "public"}`.
//!
//! `generation` names the read-model generation (the PostgreSQL schema) the batch was committed
//! to: after `projector switch`, a reader takes only the active generation's progress. A notice
//! without it (from a projector older than generations) is the live schema `public`'s.

use serde::{Deserialize, Serialize};

/// The PostgreSQL `NOTIFY` channel.
pub const CHANNEL: &str = "projector_progress";
/// The channel `projector switch` notifies on commit, with the new active generation's schema
/// name as the payload.
pub const GENERATION_CHANNEL: &str = "read_model_generation";
/// The generation every database starts with, and the one a notice without a generation is of.
pub const FIRST_GENERATION: &str = "public";

fn first_generation() -> String {
    FIRST_GENERATION.to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressNotice {
    pub topic: String,
    /// `(partition, next offset to project)` for each partition the batch advanced.
    pub offsets: Vec<(i32, i64)>,
    /// The read-model generation (schema) the batch was committed to.
    #[serde(default = "first_generation")]
    pub generation: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_is_topic_and_pairs() {
        let notice = ProgressNotice {
            topic: "t".into(),
            offsets: vec![(0, 42), (3, 7)],
            generation: "generation_2".into(),
        };
        let json = serde_json::to_string(&notice).expect("json");
        assert_eq!(
            json,
            r#"{"topic":"t","offsets":[[0,42],[3,7]],"generation":"generation_2"}"#
        );
        assert_eq!(
            serde_json::from_str::<ProgressNotice>(&json).expect("parses"),
            notice
        );
    }

    #[test]
    fn a_notice_without_a_generation_is_the_first_generations() {
        let notice: ProgressNotice =
            serde_json::from_str(r#"{"topic":"t","offsets":[[1,5]]}"#).expect("parses");
        assert_eq!(notice.generation, "public");
        assert_eq!(notice.offsets, [(1, 5)]);
    }
}
