//! The checks after the load: every acknowledged command decided ([`settle`]), and the effect of
//! every applied one visible exactly once ([`check_effects`]).
//!
//! Effects are read with the token of the user's last acknowledged write, which covers all of
//! the user's writes (one user's events share a partition). For each user: the display name is
//! the marker of its last applied profile write, `post_count` the number of its applied
//! publications, and its stream holds one `user.registered` and one `user.profile_updated` per
//! applied update (found by its marker). For each applied publication: the post's title is the
//! marker of its last applied write, and its stream holds one `post.published` and one
//! `post.edited` per applied edit. An applied effect found twice, or a rejected one found at
//! all, is duplicated; an applied one not found is missing. A write that never got its `202`
//! may or may not have been applied, and may even have been appended after later writes (an
//! attempt still queued in a producer): its marker is accepted as the final state where the
//! stream's last event says it came last, and a publication of it may count in `post_count`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::client::Connection;
use crate::contract::CONSISTENCY_TOKEN;

use super::journal::{BAD_ANSWER, Phase};
use super::patient::Sent;
use super::writer::{Decision, Shared, UserRecord, WriteKind};

/// Concurrent requests of the checks.
const CHECKERS: usize = 8;

/// Between two reads of a decision that is still 404.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// Items per page of a stream read.
const STREAM_PAGE: u32 = 100;

/// Decisions of the acknowledged commands, by command id; an undecided one is absent.
pub type Decisions = HashMap<Uuid, Decision>;

/// What the checks found: a part of the report ([`super::report::ChaosReport`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Findings {
    pub acknowledged: u64,
    pub acknowledged_by_kind: BTreeMap<String, u64>,
    pub applied: u64,
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub lost: u64,
    pub duplicated: u64,
    pub effects_missing: u64,
    /// Resources the checker could not read (no usable answer within the retry budget).
    pub unverified: u64,
}

/// Polls `GET /v1/commands/{id}` (with the command's own token) for every acknowledged command
/// until it is decided or `settle_timeout` has passed; each command is asked at least once.
pub async fn settle(
    shared: &Arc<Shared>,
    users: &Arc<Vec<UserRecord>>,
    settle_timeout: Duration,
) -> (Decisions, Findings) {
    let mut findings = Findings::default();
    let mut commands: HashMap<Uuid, String> = HashMap::new();
    for write in users.iter().flat_map(|user| &user.writes) {
        if let Some(ack) = &write.ack
            && commands.insert(ack.command_id, ack.token.clone()).is_none()
        {
            findings.acknowledged += 1;
            *findings
                .acknowledged_by_kind
                .entry(write.kind.name().to_owned())
                .or_default() += 1;
        }
    }
    let commands: Arc<Vec<(Uuid, String)>> = Arc::new(commands.into_iter().collect());
    let deadline = Instant::now() + settle_timeout;
    // A task that panicked leaves its commands undecided: they count as lost, never as fine.
    let (decided, _) = in_parallel(commands.len(), {
        let shared = Arc::clone(shared);
        let commands = Arc::clone(&commands);
        move |next| settle_some(Arc::clone(&shared), Arc::clone(&commands), next, deadline)
    })
    .await;
    let decisions: Decisions = decided.into_iter().collect();
    for (command_id, _) in commands.iter() {
        match decisions.get(command_id) {
            Some(Decision::Applied) => findings.applied += 1,
            Some(Decision::Rejected(reason)) => {
                *findings
                    .rejected_by_reason
                    .entry(reason.clone())
                    .or_default() += 1;
            }
            None => {
                findings.lost += 1;
                shared.journal.example(format!(
                    "lost: command {command_id} was acknowledged and is not decided after {settle_timeout:?}"
                ));
            }
        }
    }
    (decisions, findings)
}

async fn settle_some(
    shared: Arc<Shared>,
    commands: Arc<Vec<(Uuid, String)>>,
    next: Arc<AtomicUsize>,
    deadline: Instant,
) -> Vec<(Uuid, Decision)> {
    let mut connection = Connection::new(shared.query.clone());
    let mut decided = Vec::new();
    while let Some(i) = claim(&next, commands.len()) {
        let (command_id, token) = &commands[i];
        let path = format!("/v1/commands/{command_id}");
        let request = shared
            .query
            .request(Method::GET, &path)
            .header(CONSISTENCY_TOKEN, token.clone());
        let mut patient = shared.patient("settle", Phase::Verify);
        patient.deadline = deadline;
        loop {
            match patient.send(&mut connection, &request).await {
                Sent::Answer(answer) if answer.status == StatusCode::OK => {
                    match Decision::parse(&answer.body) {
                        Some(decision) => decided.push((*command_id, decision)),
                        None => shared.journal.failed("settle", BAD_ANSWER, Phase::Verify),
                    }
                    break;
                }
                Sent::Answer(answer) => {
                    if answer.status != StatusCode::NOT_FOUND {
                        shared
                            .journal
                            .failed("settle", answer.status.as_str(), Phase::Verify);
                    }
                    if Instant::now() + SETTLE_POLL > deadline {
                        break;
                    }
                    tokio::time::sleep(SETTLE_POLL).await;
                }
                Sent::GaveUp | Sent::Unreachable(_) => break,
            }
        }
    }
    decided
}

/// Checks every user's and every applied post's effects; adds to `findings`.
pub async fn check_effects(
    shared: &Arc<Shared>,
    users: &Arc<Vec<UserRecord>>,
    decisions: Arc<Decisions>,
    findings: &mut Findings,
) {
    let (parts, panicked) = in_parallel(users.len(), {
        let shared = Arc::clone(shared);
        let users = Arc::clone(users);
        move |next| {
            check_some(
                Arc::clone(&shared),
                Arc::clone(&users),
                Arc::clone(&decisions),
                next,
            )
        }
    })
    .await;
    findings.unverified += panicked;
    for part in parts {
        findings.duplicated += part.duplicated;
        findings.effects_missing += part.effects_missing;
        findings.unverified += part.unverified;
    }
}

async fn check_some(
    shared: Arc<Shared>,
    users: Arc<Vec<UserRecord>>,
    decisions: Arc<Decisions>,
    next: Arc<AtomicUsize>,
) -> Vec<Findings> {
    let mut checker = Checker {
        connection: Connection::new(shared.query.clone()),
        shared,
        decisions,
        findings: Findings::default(),
    };
    while let Some(i) = claim(&next, users.len()) {
        checker.check_user(&users[i]).await;
    }
    vec![checker.findings]
}

/// One event of a stream page, as far as the checks need it.
#[derive(Debug, Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Value,
}

#[derive(Debug, Deserialize)]
struct StreamPage {
    items: Vec<StreamEvent>,
    next_cursor: Option<String>,
}

/// What a stream must hold for one write: events of this type, carrying this marker in this
/// field (or any, for the one registration).
struct Effect<'a> {
    event_type: &'static str,
    marker: Option<(&'static str, &'a str)>,
}

impl Effect<'_> {
    fn count(&self, stream: &[StreamEvent]) -> usize {
        stream
            .iter()
            .filter(|event| event.event_type == self.event_type)
            .filter(|event| {
                self.marker.is_none_or(|(field, marker)| {
                    event.data.get(field).and_then(Value::as_str) == Some(marker)
                })
            })
            .count()
    }
}

struct Checker {
    shared: Arc<Shared>,
    connection: Connection,
    decisions: Arc<Decisions>,
    findings: Findings,
}

impl Checker {
    fn decision(&self, user: &UserRecord, index: usize) -> Option<&Decision> {
        let ack = user.writes[index].ack.as_ref()?;
        self.decisions.get(&ack.command_id)
    }

    fn duplicated(&mut self, text: String) {
        self.findings.duplicated += 1;
        self.shared.journal.example(format!("duplicated: {text}"));
    }

    fn missing(&mut self, text: String) {
        self.findings.effects_missing += 1;
        self.shared
            .journal
            .example(format!("effect missing: {text}"));
    }

    async fn check_user(&mut self, user: &UserRecord) {
        let Some(token) = user.last_token() else {
            return;
        };
        let Some(shown) = self
            .read_json(&format!("/v1/users/{}", user.id), token, "verify_user")
            .await
        else {
            return;
        };
        let Some(stream) = self.read_stream(user.id, token).await else {
            return;
        };
        let profile: Vec<usize> = (0..user.writes.len())
            .filter(|&i| user.writes[i].kind.on_user())
            .collect();
        self.check_marker(user, user.id, &profile, &shown, &stream, "display_name");
        self.check_stream(user, &profile, &stream, "display_name");

        let publishes: Vec<usize> = (0..user.writes.len())
            .filter(|&i| user.writes[i].kind == WriteKind::PublishPost)
            .collect();
        let applied = publishes
            .iter()
            .filter(|&&i| self.decision(user, i) == Some(&Decision::Applied))
            .count() as u64;
        let unacknowledged = publishes
            .iter()
            .filter(|&&i| user.writes[i].ack.is_none())
            .count() as u64;
        match shown.get("post_count").and_then(Value::as_u64) {
            Some(count) if count > applied + unacknowledged => self.duplicated(format!(
                "user {} has post_count {count}, {applied} publications were applied",
                user.id
            )),
            Some(count) if count < applied => self.missing(format!(
                "user {} has post_count {count}, {applied} publications were applied",
                user.id
            )),
            Some(_) => {}
            None => {
                self.shared
                    .journal
                    .failed("verify_user", BAD_ANSWER, Phase::Verify);
                self.findings.unverified += 1;
            }
        }

        for &publish in &publishes {
            if self.decision(user, publish) != Some(&Decision::Applied) {
                continue;
            }
            let Some(post) = user.writes[publish].resource else {
                continue;
            };
            let writes: Vec<usize> = (publish..user.writes.len())
                .filter(|&i| user.writes[i].resource == Some(post))
                .collect();
            let Some(shown) = self
                .read_json(&format!("/v1/posts/{post}"), token, "verify_post")
                .await
            else {
                continue;
            };
            let Some(stream) = self.read_stream(post, token).await else {
                continue;
            };
            self.check_marker(user, post, &writes, &shown, &stream, "title");
            self.check_stream(user, &writes, &stream, "title");
        }
    }

    /// The resource shows the marker of the last applied write among `writes`; or the marker
    /// of a write that got no `202`, if the stream's last event that sets `field` carries it
    /// (such a write may have been appended after later ones, so only the log tells its place).
    fn check_marker(
        &mut self,
        user: &UserRecord,
        resource: Uuid,
        writes: &[usize],
        shown: &Value,
        stream: &[StreamEvent],
        field: &str,
    ) {
        let Some(expected) = writes
            .iter()
            .rev()
            .find(|&&i| self.decision(user, i) == Some(&Decision::Applied))
            .copied()
        else {
            return;
        };
        let shown = shown.get(field).and_then(Value::as_str).unwrap_or_default();
        let last_in_log = stream
            .iter()
            .rev()
            .find_map(|event| event.data.get(field).and_then(Value::as_str));
        let fine = user.write_with_marker(resource, shown).is_some_and(|seen| {
            seen == expected || (user.writes[seen].ack.is_none() && last_in_log == Some(shown))
        });
        if !fine {
            self.missing(format!(
                "{resource} shows {field} `{shown}`, its last applied write set `{}`",
                user.writes[expected].marker
            ));
        }
    }

    /// Each applied write of `writes` has its event once in the stream, each rejected one none.
    fn check_stream(
        &mut self,
        user: &UserRecord,
        writes: &[usize],
        stream: &[StreamEvent],
        field: &'static str,
    ) {
        for &i in writes {
            let write = &user.writes[i];
            let effect = match write.kind {
                WriteKind::Register => Effect {
                    event_type: "user.registered",
                    marker: None,
                },
                WriteKind::UpdateProfile => Effect {
                    event_type: "user.profile_updated",
                    marker: Some((field, &write.marker)),
                },
                WriteKind::PublishPost => Effect {
                    event_type: "post.published",
                    marker: None,
                },
                WriteKind::EditPost => Effect {
                    event_type: "post.edited",
                    marker: Some((field, &write.marker)),
                },
            };
            let found = effect.count(stream);
            let command = write
                .ack
                .as_ref()
                .map_or_else(|| "no 202".to_owned(), |ack| ack.command_id.to_string());
            match (self.decision(user, i), found) {
                (Some(Decision::Applied), 0) => self.missing(format!(
                    "{} `{}` (command {command}) was applied and has no {} event",
                    write.kind.name(),
                    write.marker,
                    effect.event_type
                )),
                (Some(Decision::Applied), 1) | (Some(Decision::Rejected(_)), 0) | (None, _) => {}
                (decision, n) => self.duplicated(format!(
                    "{} `{}` (command {command}, {decision:?}) has {n} {} events",
                    write.kind.name(),
                    write.marker,
                    effect.event_type
                )),
            }
        }
    }

    async fn read_json(
        &mut self,
        path: &str,
        token: &str,
        operation: &'static str,
    ) -> Option<Value> {
        let request = self
            .shared
            .query
            .request(Method::GET, path)
            .header(CONSISTENCY_TOKEN, token.to_owned());
        let sent = self
            .shared
            .patient(operation, Phase::Verify)
            .send(&mut self.connection, &request)
            .await;
        let journal = &self.shared.journal;
        let value = match sent {
            Sent::Answer(answer) if answer.status == StatusCode::OK => {
                let value = serde_json::from_slice::<Value>(&answer.body).ok();
                if value.is_none() {
                    journal.failed(operation, BAD_ANSWER, Phase::Verify);
                }
                value
            }
            Sent::Answer(answer) => {
                journal.failed(operation, answer.status.as_str(), Phase::Verify);
                None
            }
            Sent::GaveUp | Sent::Unreachable(_) => None,
        };
        if value.is_none() {
            self.findings.unverified += 1;
            journal.example(format!("unverified: no usable answer to GET {path}"));
        }
        value
    }

    /// The whole stream of an aggregate, page by page.
    async fn read_stream(&mut self, aggregate: Uuid, token: &str) -> Option<Vec<StreamEvent>> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/streams/{aggregate}/events?limit={STREAM_PAGE}");
            if let Some(cursor) = &cursor {
                path.push_str("&cursor=");
                path.push_str(&percent_encode(cursor));
            }
            let page = self.read_json(&path, token, "verify_stream").await?;
            let page: StreamPage = match serde_json::from_value(page) {
                Ok(page) => page,
                Err(_) => {
                    self.shared
                        .journal
                        .failed("verify_stream", BAD_ANSWER, Phase::Verify);
                    self.findings.unverified += 1;
                    return None;
                }
            };
            events.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Some(events),
            }
        }
    }
}

/// A cursor is opaque: escape whatever is not unreserved in a query string.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn claim(next: &AtomicUsize, total: usize) -> Option<usize> {
    let i = next.fetch_add(1, Ordering::Relaxed);
    (i < total).then_some(i)
}

/// Runs up to [`CHECKERS`] tasks that share the indices below `total`; concatenates what they
/// return, and counts the tasks that panicked (whose part is lost).
async fn in_parallel<F, Fut, T>(total: usize, task: F) -> (Vec<T>, u64)
where
    F: Fn(Arc<AtomicUsize>) -> Fut,
    Fut: std::future::Future<Output = Vec<T>> + Send + 'static,
    T: Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CHECKERS.min(total.max(1)) {
        tasks.spawn(task(Arc::clone(&next)));
    }
    let mut all = Vec::with_capacity(total);
    let mut panicked = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(part) => all.extend(part),
            Err(_) => panicked += 1,
        }
    }
    (all, panicked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_escaped() {
        assert_eq!(percent_encode("abc-_.~9"), "abc-_.~9");
        assert_eq!(percent_encode("a+b/c=="), "a%2Bb%2Fc%3D%3D");
    }
}
