//! The golden corpus (`events/corpus/{type}/v{N}.json`, rules in its README): every type and
//! schema version ever written still decodes, to the newest shape, and the newest file of each
//! type is exactly what this code writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::domain::Event;
use crate::envelope::{Envelope, Idempotency};
use crate::event_type::EventType;
use crate::payload::{PostEdited, PostFormat, PostPublished, UserProfileUpdated, UserRegistered};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn corpus_path(event_type: EventType, version: u16) -> PathBuf {
    corpus_dir()
        .join(event_type.name())
        .join(format!("v{version}.json"))
}

/// What each corpus file decodes to, in the newest shape. A file without an entry fails the test.
fn expected_event(event_type: EventType, version: u16) -> Option<Event> {
    let event = match (event_type, version) {
        (EventType::UserRegistered, 1) => Event::UserRegistered(UserRegistered {
            display_name: "Ada".into(),
            bio: Some("first programmer".into()),
        }),
        (EventType::UserProfileUpdated, 1) => Event::UserProfileUpdated(UserProfileUpdated {
            display_name: None,
            bio: Some("analytical engines, notes".into()),
        }),
        (EventType::UserDeleted, 1) => Event::UserDeleted,
        // Written before posts had a format: plain text.
        (EventType::PostPublished, 1) => Event::PostPublished(PostPublished {
            title: "Hello".into(),
            body: "My first post".into(),
            format: PostFormat::Plain,
        }),
        (EventType::PostPublished, 2) => Event::PostPublished(PostPublished {
            title: "Notes on the Engine".into(),
            body: "# Notes\n\nThe engine *weaves* algebraic patterns.".into(),
            format: PostFormat::Markdown,
        }),
        (EventType::PostEdited, 1) => Event::PostEdited(PostEdited {
            title: Some("Hello, world".into()),
            body: None,
        }),
        (EventType::PostDeleted, 1) => Event::PostDeleted,
        _ => return None,
    };
    Some(event)
}

/// One corpus file, named by its path.
struct CorpusFile {
    path: PathBuf,
    event_type: EventType,
    version: u16,
    bytes: Vec<u8>,
    json: serde_json::Value,
}

/// Every file under `corpus/`, each of which must be `{known type}/v{N}.json`.
fn corpus_files() -> Vec<CorpusFile> {
    let mut files = Vec::new();
    for type_dir in std::fs::read_dir(corpus_dir()).expect("events/corpus exists") {
        let type_dir = type_dir.expect("a directory entry").path();
        if !type_dir.is_dir() {
            assert_eq!(
                type_dir.file_name().and_then(|n| n.to_str()),
                Some("README.md"),
                "only type folders and the README belong in corpus/"
            );
            continue;
        }
        let type_name = type_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 folder name");
        let event_type = EventType::from_name(type_name)
            .unwrap_or_else(|| panic!("corpus folder {type_name:?} is not an event type"));
        for file in std::fs::read_dir(&type_dir).expect("readable") {
            let path = file.expect("a directory entry").path();
            let version = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{} is not named v{{N}}.json", path.display()));
            let bytes = std::fs::read(&path).expect("readable");
            let json = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
            files.push(CorpusFile {
                path,
                event_type,
                version,
                bytes,
                json,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

#[test]
fn every_corpus_file_decodes_to_its_expected_newest_value() {
    let files = corpus_files();
    assert!(!files.is_empty(), "the corpus is empty");
    for file in files {
        let path = file.path.display();
        assert_eq!(file.json["type"], file.event_type.name(), "{path}: type");
        assert_eq!(
            file.json["schema_version"], file.version,
            "{path}: schema_version"
        );
        let envelope = Envelope::decode(&file.bytes)
            .unwrap_or_else(|e| panic!("{path} no longer decodes: {e}"));
        let expected = expected_event(file.event_type, file.version)
            .unwrap_or_else(|| panic!("{path} has no expected value in corpus_tests.rs"));
        assert_eq!(envelope.event, expected, "{path}: event");

        let text = |field: &str| file.json[field].as_str().map(str::to_owned);
        assert_eq!(
            Some(envelope.event_id.to_string()),
            text("event_id"),
            "{path}"
        );
        assert_eq!(
            Some(envelope.aggregate_id.to_string()),
            text("aggregate_id"),
            "{path}"
        );
        assert_eq!(
            Some(envelope.partition_key.to_string()),
            text("partition_key"),
            "{path}"
        );
        assert_eq!(
            Some(envelope.command_id.to_string()),
            text("command_id"),
            "{path}"
        );
        assert_eq!(
            envelope.accepted_at,
            text("accepted_at")
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .expect("an RFC 3339 accepted_at"),
            "{path}"
        );
        assert_eq!(
            envelope.expected_version,
            file.json["expected_version"].as_i64(),
            "{path}"
        );
        let idempotency: Option<Idempotency> =
            serde_json::from_value(file.json["idempotency"].clone()).expect("idempotency");
        assert_eq!(envelope.idempotency, idempotency, "{path}");

        assert_eq!(
            envelope.schema_version(),
            file.event_type.schema_version(),
            "{path}: decoded events are re-encoded as the current version"
        );
    }
}

#[test]
fn every_version_of_every_type_has_a_corpus_file() {
    let present: BTreeSet<(&str, u16)> = corpus_files()
        .iter()
        .map(|f| (f.event_type.name(), f.version))
        .collect();
    for event_type in EventType::ALL {
        for version in 1..=event_type.schema_version() {
            assert!(
                present.contains(&(event_type.name(), version)),
                "no corpus file for {} v{version}: add {}",
                event_type.name(),
                corpus_path(event_type, version).display()
            );
        }
    }
}

#[test]
fn no_corpus_file_is_newer_than_the_code() {
    for file in corpus_files() {
        assert!(
            file.version <= file.event_type.schema_version(),
            "{} is newer than the current version of {}",
            file.path.display(),
            file.event_type.name()
        );
    }
}

/// A change to what the code writes that was not given a new version (a renamed, added or
/// dropped field) fails here, before old readers or old events meet it.
#[test]
fn the_newest_corpus_file_of_each_type_is_exactly_what_this_code_writes() {
    for event_type in EventType::ALL {
        let path = corpus_path(event_type, event_type.schema_version());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let written: serde_json::Value = serde_json::from_slice(
            &Envelope::decode(&bytes)
                .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
                .encode(),
        )
        .expect("json");
        let on_file: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(written, on_file, "{}", path.display());
    }
}
