//! The projector's progress notice: how the read side learns that the read model moved.
//!
//! After each committed batch the projector sends, on the PostgreSQL channel [`CHANNEL`] and
//! inside the batch's transaction (so it is delivered on commit, never for a rollback), a
//! [`ProgressNotice`] with the new next offset of every partition the batch advanced and what
//! the batch changed. The query API's consistency waits and its read cache listen for it. JSON:
//! `{"topic": "...", "offsets": [[0, 42], ...], "generation": "public", "changed": {"owners":
//! ["<uuid>", ...], "posts": ["<uuid>", ...]}}`.
//!
//! `generation` names the read-model generation (the PostgreSQL schema) the batch was committed
//! to: after `projector switch`, a reader takes only the active generation's progress. A notice
//! without it (from a projector older than generations) is the live schema `public`'s.
//!
//! `changed` names, for caches, the rows the batch may have changed: the owner (the user, whose
//! id is the partition key) of every event it applied, and every post it wrote. A user's own
//! rows, pages of their posts and every post of theirs (also the ones a `user.deleted` hides
//! without naming them) are stale once their owner is named. A NOTIFY payload holds at most
//! 8000 bytes, so a batch that changed more than fits says `"changed": null`, as does a notice
//! without the field (from a projector older than it): anything may have changed.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The PostgreSQL `NOTIFY` channel.
pub const CHANNEL: &str = "projector_progress";
/// The channel `projector switch` notifies on commit, with the new active generation's schema
/// name as the payload.
pub const GENERATION_CHANNEL: &str = "read_model_generation";
/// The generation every database starts with, and the one a notice without a generation is of.
pub const FIRST_GENERATION: &str = "public";
/// PostgreSQL refuses a NOTIFY payload of 8000 bytes or more.
pub const MAX_PAYLOAD_BYTES: usize = 7999;

/// A name that needs no quoting in SQL (lower-case letters, digits and underscores, not starting
/// with a digit, at most 63 bytes), so a generation's schema can go into `search_path` and
/// statements as is. Every generation name is one.
pub fn is_plain_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

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
    /// What the batch changed; `None`: not said, so anything may have changed.
    #[serde(default)]
    pub changed: Option<Changed>,
}

/// The ids a batch changed rows of.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// The partition key (the user) of every applied event: the user's own and their posts'.
    pub owners: Vec<Uuid>,
    /// Every post the batch wrote.
    pub posts: Vec<Uuid>,
}

/// Bytes one id adds to the JSON: 36 characters, two quotes and a comma.
const BYTES_PER_ID: usize = 36 + 2 + 1;

impl ProgressNotice {
    /// The notice of a batch that committed `offsets` to `generation` and changed the rows of
    /// `owners` and `posts`: naming them when they fit in a NOTIFY payload, else `changed: None`.
    pub fn new(
        topic: String,
        offsets: Vec<(i32, i64)>,
        generation: String,
        owners: Vec<Uuid>,
        posts: Vec<Uuid>,
    ) -> ProgressNotice {
        let mut notice = ProgressNotice {
            topic,
            offsets,
            generation,
            changed: None,
        };
        let without = serde_json::to_string(&notice).map_or(usize::MAX, |json| json.len());
        let empty = r#"{"owners":[],"posts":[]}"#.len() - "null".len();
        let with = without
            .saturating_add(empty)
            .saturating_add((owners.len() + posts.len()).saturating_mul(BYTES_PER_ID));
        if with <= MAX_PAYLOAD_BYTES {
            notice.changed = Some(Changed { owners, posts });
        }
        notice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn plain_identifiers_need_no_quoting_and_others_are_refused() {
        for plain in ["public", "generation_12", "_x", &"a".repeat(63)] {
            assert!(is_plain_identifier(plain), "{plain}");
        }
        for other in [
            "",
            "1gen",
            "Gen",
            "gen-1",
            "gen;drop",
            "g\"x",
            &"a".repeat(64),
        ] {
            assert!(!is_plain_identifier(other), "{other}");
        }
    }

    #[test]
    fn wire_form_is_topic_pairs_generation_and_what_changed() {
        let notice = ProgressNotice {
            topic: "t".into(),
            offsets: vec![(0, 42), (3, 7)],
            generation: "generation_2".into(),
            changed: Some(Changed {
                owners: vec![id(1)],
                posts: vec![id(2), id(3)],
            }),
        };
        let json = serde_json::to_string(&notice).expect("json");
        assert_eq!(
            json,
            r#"{"topic":"t","offsets":[[0,42],[3,7]],"generation":"generation_2","changed":{"owners":["00000000-0000-0000-0000-000000000001"],"posts":["00000000-0000-0000-0000-000000000002","00000000-0000-0000-0000-000000000003"]}}"#
        );
        assert_eq!(
            serde_json::from_str::<ProgressNotice>(&json).expect("parses"),
            notice
        );
    }

    #[test]
    fn too_much_to_name_is_null() {
        let notice = ProgressNotice {
            changed: None,
            ..ProgressNotice::new("t".into(), vec![(1, 5)], "public".into(), vec![], vec![])
        };
        let json = serde_json::to_string(&notice).expect("json");
        assert_eq!(
            json,
            r#"{"topic":"t","offsets":[[1,5]],"generation":"public","changed":null}"#
        );
        assert_eq!(
            serde_json::from_str::<ProgressNotice>(&json).expect("parses"),
            notice
        );
    }

    #[test]
    fn a_notice_of_an_older_projector_reads_as_public_and_anything_changed() {
        let notice: ProgressNotice =
            serde_json::from_str(r#"{"topic":"t","offsets":[[1,5]]}"#).expect("parses");
        assert_eq!(notice.generation, "public");
        assert_eq!(notice.offsets, [(1, 5)]);
        assert_eq!(notice.changed, None);
    }

    #[test]
    fn names_what_changed_as_long_as_the_payload_fits() {
        let offsets: Vec<(i32, i64)> = (0..12).map(|p| (p, i64::MAX)).collect();
        let generation = "generation_123456789".to_owned();
        let notice = |ids: u128| {
            ProgressNotice::new(
                "user-data-events".into(),
                offsets.clone(),
                generation.clone(),
                (0..ids / 2).map(|n| id(u128::MAX - n)).collect(),
                (ids / 2..ids).map(|n| id(u128::MAX - n)).collect(),
            )
        };
        let named: Vec<u128> = (0..400)
            .filter(|ids| notice(*ids).changed.is_some())
            .collect();
        let most = named.last().copied().expect("some fit");
        assert_eq!(named, (0..=most).collect::<Vec<_>>(), "fewer always fit");
        assert!(most >= 150, "only {most} ids fit");
        let fits = serde_json::to_string(&notice(most)).expect("json");
        assert!(fits.len() <= MAX_PAYLOAD_BYTES, "{}", fits.len());
        assert_eq!(notice(most + 1).changed, None);
    }
}
