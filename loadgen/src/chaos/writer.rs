//! [`Writer`]: one writer task of a chaos run. It registers its own users, then writes as them
//! at its share of `--write-rate`, one operation at a time, and after each `202` reads with the
//! write's consistency token and judges what it sees ([`Writer::check_reads`]).
//!
//! One operation at a time per writer, and each user written by one writer only: so the order
//! of a user's writes is the order they were sent, and a read after write `n` must show `n`'s
//! marker or a later one of the same resource. A marker of an earlier write is a stale read
//! only if write `n` was applied, which the command's decision (read with the same token) says.
//! A write that never got its `202` has an unknown fate and place in the log (an attempt may
//! still be appended after later writes), so seeing its marker proves nothing either way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::client::{Connection, Endpoint, RequestBuilder};
use crate::contract::{Accepted, CONSISTENCY_TOKEN, IDEMPOTENCY_KEY};
use crate::sampling::Rng;

use super::journal::{BAD_ANSWER, Journal, Phase};
use super::patient::{Patient, Sent};

/// The rejection reasons contract v1 names; any other is a broken promise.
pub const CONTRACT_REASONS: [&str; 4] = [
    "version_conflict",
    "not_found",
    "already_exists",
    "idempotency_key_reused",
];

/// Bytes of each post body: small, the run is about correctness, not volume.
pub const POST_BODY_BYTES: usize = 300;

/// Seed of the writers' choices (which user, which write): the same on every run, so a test's
/// fake sees the same sequence of kinds.
const CHOICE_SEED: u64 = 0xc4a0_5eed;

/// What a write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteKind {
    /// `POST /v1/users`; its marker is the display name.
    Register,
    /// `PATCH /v1/users/{id}` with a new display name (the marker).
    UpdateProfile,
    /// `POST /v1/users/{id}/posts`; its marker is the title.
    PublishPost,
    /// `PATCH /v1/users/{id}/posts/{post_id}` with a new title (the marker).
    EditPost,
}

impl WriteKind {
    pub const ALL: [WriteKind; 4] = [
        WriteKind::Register,
        WriteKind::UpdateProfile,
        WriteKind::PublishPost,
        WriteKind::EditPost,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WriteKind::Register => "register",
            WriteKind::UpdateProfile => "update_profile",
            WriteKind::PublishPost => "publish_post",
            WriteKind::EditPost => "edit_post",
        }
    }

    /// True for the writes whose marker is the user's display name.
    pub fn on_user(self) -> bool {
        matches!(self, WriteKind::Register | WriteKind::UpdateProfile)
    }
}

/// A write's `202`: the command it became and the token that covers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub command_id: Uuid,
    pub token: String,
}

/// One write, acknowledged or not.
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: WriteKind,
    /// The user or post it changes; a publish that got no `202` has none (its id is unknown).
    pub resource: Option<Uuid>,
    /// The unique display name or title it sets.
    pub marker: String,
    pub ack: Option<Ack>,
}

/// A user of the run and everything its writer sent as it, in order.
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: Uuid,
    access_token: String,
    pub writes: Vec<Write>,
    /// Index into `writes` by marker.
    markers: HashMap<String, usize>,
    /// Posts whose publication was acknowledged: the ones edits pick from.
    posts: Vec<Uuid>,
}

impl UserRecord {
    fn push(&mut self, write: Write) -> usize {
        let index = self.writes.len();
        self.markers.insert(write.marker.clone(), index);
        if write.kind == WriteKind::PublishPost
            && write.ack.is_some()
            && let Some(post) = write.resource
        {
            self.posts.push(post);
        }
        self.writes.push(write);
        index
    }

    /// The write that set `marker` on `resource`, if this user sent one.
    pub fn write_with_marker(&self, resource: Uuid, marker: &str) -> Option<usize> {
        self.markers
            .get(marker)
            .copied()
            .filter(|&i| self.writes[i].resource == Some(resource))
    }

    /// The token of the user's last acknowledged write: it covers all of the user's writes,
    /// which share one partition.
    pub fn last_token(&self) -> Option<&str> {
        self.writes
            .iter()
            .rev()
            .find_map(|write| write.ack.as_ref().map(|ack| ack.token.as_str()))
    }

    /// The path a write's resource reads at, and the field its marker shows in.
    pub fn read_path(kind: WriteKind, resource: Uuid) -> (String, &'static str) {
        if kind.on_user() {
            (format!("/v1/users/{resource}"), "display_name")
        } else {
            (format!("/v1/posts/{resource}"), "title")
        }
    }
}

/// A command's decision, as `GET /v1/commands/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Applied,
    Rejected(String),
}

impl Decision {
    /// `None` for an answer outside the contract (an unknown status or reason).
    pub fn parse(body: &[u8]) -> Option<Decision> {
        #[derive(Deserialize)]
        struct Body {
            status: String,
            reason: Option<String>,
        }
        let body: Body = serde_json::from_slice(body).ok()?;
        match (body.status.as_str(), body.reason) {
            ("applied", _) => Some(Decision::Applied),
            ("rejected", Some(reason)) if CONTRACT_REASONS.contains(&reason.as_str()) => {
                Some(Decision::Rejected(reason))
            }
            _ => None,
        }
    }
}

/// What the writers and the checker share.
#[derive(Debug)]
pub struct Shared {
    pub command: Endpoint,
    pub query: Endpoint,
    pub journal: Journal,
    pub timeout: Duration,
    pub retry_for: Duration,
    pub reads_per_write: u32,
    /// Part of every marker, so that markers of two runs against one deployment differ.
    pub nonce: String,
    pub post_body: String,
}

impl Shared {
    pub fn patient(&self, operation: &'static str, phase: Phase) -> Patient<'_> {
        Patient {
            journal: &self.journal,
            operation,
            phase,
            timeout: self.timeout,
            deadline: Instant::now() + self.retry_for,
            refused_is_fatal: false,
        }
    }
}

/// A fresh idempotency key: unguessable (a sign-up's key stands for its access token).
fn fresh_key() -> String {
    format!("chaos-{}", Uuid::now_v7().simple())
}

/// One writer task.
#[derive(Debug)]
pub struct Writer {
    index: usize,
    shared: Arc<Shared>,
    command: Connection,
    query: Connection,
    rng: Rng,
    users: Vec<UserRecord>,
    next_user: usize,
}

impl Writer {
    /// Registers the writer's users (one or two). Errors when a registration gets no `202`: the
    /// run cannot start.
    pub async fn register(index: usize, shared: Arc<Shared>) -> anyhow::Result<Writer> {
        let mut writer = Writer {
            index,
            command: Connection::new(shared.command.clone()),
            query: Connection::new(shared.query.clone()),
            shared,
            rng: Rng::stream(CHOICE_SEED, index as u64),
            users: Vec::new(),
            next_user: 0,
        };
        for _ in 0..1 + index % 2 {
            writer.register_user().await?;
        }
        Ok(writer)
    }

    async fn register_user(&mut self) -> anyhow::Result<()> {
        let marker = format!(
            "chaos {} w{}u{} #0",
            self.shared.nonce,
            self.index,
            self.users.len()
        );
        let body = json!({"display_name": marker, "bio": "written by loadgen chaos"});
        let request = self
            .shared
            .command
            .request(Method::POST, "/v1/users")
            .header(IDEMPOTENCY_KEY, fresh_key())
            .json(Bytes::from(body.to_string()));
        Journal::add(&self.shared.journal.writes_attempted);
        let mut patient = self.shared.patient(WriteKind::Register.name(), Phase::Load);
        patient.refused_is_fatal = true;
        let accepted = match patient.send(&mut self.command, &request).await {
            Sent::Answer(answer) if answer.status == StatusCode::ACCEPTED => {
                serde_json::from_slice::<Accepted>(&answer.body).ok()
            }
            Sent::Answer(answer) => anyhow::bail!(
                "registering a user at {} answered {}: {}",
                self.shared.command.url(),
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ),
            Sent::GaveUp => anyhow::bail!(
                "registering a user at {} got no answer but 503s and errors for {:?}",
                self.shared.command.url(),
                self.shared.retry_for
            ),
            Sent::Unreachable(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot reach the command API at {}",
                    self.shared.command.url()
                )));
            }
        };
        let Some(Accepted {
            command_id,
            aggregate_id,
            consistency_token,
            access_token: Some(access_token),
        }) = accepted
        else {
            anyhow::bail!("a sign-up's 202 lacks its ids or its access token");
        };
        Journal::add(&self.shared.journal.writes_acknowledged);
        let mut user = UserRecord {
            id: aggregate_id,
            access_token,
            writes: Vec::new(),
            markers: HashMap::new(),
            posts: Vec::new(),
        };
        let written = user.push(Write {
            kind: WriteKind::Register,
            resource: Some(aggregate_id),
            marker,
            ack: Some(Ack {
                command_id,
                token: consistency_token,
            }),
        });
        self.users.push(user);
        self.check_reads(self.users.len() - 1, written).await;
        Ok(())
    }

    /// Writes at one write per `interval` from `first_due` until `stop` turns true, then
    /// finishes the operation under way and hands back its users.
    pub async fn run(
        mut self,
        first_due: Instant,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Vec<UserRecord> {
        let mut due = first_due;
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => break,
                () = tokio::time::sleep_until(due.into()) => {}
            }
            self.write_once().await;
            due += interval;
            // Behind after a long retry: go on from now, without a burst to catch up.
            due = due.max(Instant::now());
        }
        self.users
    }

    async fn write_once(&mut self) {
        let user = self.next_user;
        self.next_user = (self.next_user + 1) % self.users.len();
        let has_posts = !self.users[user].posts.is_empty();
        let draw = self.rng.next_f64();
        let kind = match (has_posts, draw) {
            (false, d) if d < 0.5 => WriteKind::UpdateProfile,
            (false, _) => WriteKind::PublishPost,
            (true, d) if d < 0.35 => WriteKind::UpdateProfile,
            (true, d) if d < 0.7 => WriteKind::PublishPost,
            (true, _) => WriteKind::EditPost,
        };
        let record = &self.users[user];
        let marker = format!(
            "chaos {} w{}u{} #{}",
            self.shared.nonce,
            self.index,
            user,
            record.writes.len()
        );
        let (method, path, body, resource) = match kind {
            WriteKind::Register | WriteKind::UpdateProfile => (
                Method::PATCH,
                format!("/v1/users/{}", record.id),
                json!({"display_name": marker}),
                Some(record.id),
            ),
            WriteKind::PublishPost => (
                Method::POST,
                format!("/v1/users/{}/posts", record.id),
                json!({"title": marker, "body": self.shared.post_body}),
                None,
            ),
            WriteKind::EditPost => {
                let post = record.posts[self.rng.below(record.posts.len())];
                (
                    Method::PATCH,
                    format!("/v1/users/{}/posts/{post}", record.id),
                    json!({"title": marker, "body": self.shared.post_body}),
                    Some(post),
                )
            }
        };
        let request = self
            .shared
            .command
            .request(method, &path)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", record.access_token),
            )
            .header(IDEMPOTENCY_KEY, fresh_key())
            .json(Bytes::from(body.to_string()));
        let ack = self.send_write(kind, &request).await;
        let resource = match (&ack, kind) {
            (Some((_, created)), WriteKind::PublishPost) => Some(*created),
            _ => resource,
        };
        let acknowledged = ack.is_some();
        let written = self.users[user].push(Write {
            kind,
            resource,
            marker,
            ack: ack.map(|(ack, _)| ack),
        });
        if acknowledged {
            self.check_reads(user, written).await;
        }
    }

    /// Sends a write until its `202` (returned with the aggregate id) or until it cannot be had.
    async fn send_write(
        &mut self,
        kind: WriteKind,
        request: &RequestBuilder,
    ) -> Option<(Ack, Uuid)> {
        let journal = &self.shared.journal;
        Journal::add(&journal.writes_attempted);
        let sent = self
            .shared
            .patient(kind.name(), Phase::Load)
            .send(&mut self.command, request)
            .await;
        let accepted = match sent {
            Sent::Answer(answer) if answer.status == StatusCode::ACCEPTED => {
                match serde_json::from_slice::<Accepted>(&answer.body) {
                    Ok(accepted) => Some(accepted),
                    Err(_) => {
                        journal.failed(kind.name(), BAD_ANSWER, Phase::Load);
                        None
                    }
                }
            }
            Sent::Answer(answer) => {
                journal.failed(kind.name(), answer.status.as_str(), Phase::Load);
                None
            }
            Sent::GaveUp | Sent::Unreachable(_) => {
                Journal::add(&journal.gave_up);
                journal.example(format!(
                    "{}: gave up after retrying for {:?}",
                    kind.name(),
                    self.shared.retry_for
                ));
                None
            }
        };
        match accepted {
            Some(_) => Journal::add(&journal.writes_acknowledged),
            None => Journal::add(&journal.writes_unacknowledged),
        }
        accepted.map(|accepted| {
            (
                Ack {
                    command_id: accepted.command_id,
                    token: accepted.consistency_token,
                },
                accepted.aggregate_id,
            )
        })
    }

    /// The reads after an acknowledged write, with its token: the resource, and every third
    /// read (the second, fifth...) the command's decision.
    async fn check_reads(&mut self, user: usize, written: usize) {
        for read in 0..self.shared.reads_per_write {
            if read % 3 == 1 {
                self.check_decision(user, written).await;
            } else {
                self.check_resource(user, written).await;
            }
        }
    }

    async fn check_resource(&mut self, user: usize, written: usize) {
        let record = &self.users[user];
        let write = &record.writes[written];
        let (Some(resource), Some(ack)) = (write.resource, &write.ack) else {
            return;
        };
        let (path, field) = UserRecord::read_path(write.kind, resource);
        let operation = if write.kind.on_user() {
            "read_user"
        } else {
            "read_post"
        };
        let request = self
            .shared
            .query
            .request(Method::GET, &path)
            .header(CONSISTENCY_TOKEN, ack.token.clone());
        let shared = Arc::clone(&self.shared);
        let journal = &shared.journal;
        let sent = shared
            .patient(operation, Phase::Load)
            .send(&mut self.query, &request)
            .await;
        let record = &self.users[user];
        let shown = match sent {
            Sent::Answer(answer) if answer.status == StatusCode::OK => {
                let Some(shown) = serde_json::from_slice::<Value>(&answer.body)
                    .ok()
                    .and_then(|body| body.get(field)?.as_str().map(str::to_owned))
                else {
                    journal.failed(operation, BAD_ANSWER, Phase::Load);
                    return;
                };
                shown
            }
            Sent::Answer(answer) if answer.status == StatusCode::NOT_FOUND => "404".to_owned(),
            Sent::Answer(answer) => {
                journal.failed(operation, answer.status.as_str(), Phase::Load);
                return;
            }
            Sent::GaveUp | Sent::Unreachable(_) => {
                Journal::add(&journal.gave_up);
                journal.example(format!("{operation}: gave up on GET {path}"));
                return;
            }
        };
        Journal::add(&journal.reads_checked);
        let fresh = match record.write_with_marker(resource, &shown) {
            Some(seen) => seen >= written || record.writes[seen].ack.is_none(),
            None => false,
        };
        if fresh {
            return;
        }
        let ack = ack.clone();
        let what = format!(
            "GET {path} with the token of command {} showed `{shown}`, not `{}` or later",
            ack.command_id, write.marker
        );
        match self.decision(&ack, "read_command").await {
            Some(Some(Decision::Applied)) => journal.stale(format!("{what}; it was applied")),
            Some(None) => journal.stale(format!(
                "{what}; and the command is not decided (404) under its own token"
            )),
            // Rejected for a contract reason: the old data is right. Or no answer (logged).
            Some(Some(Decision::Rejected(_))) | None => {}
        }
    }

    async fn check_decision(&mut self, user: usize, written: usize) {
        let Some(ack) = self.users[user].writes[written].ack.clone() else {
            return;
        };
        if let Some(decision) = self.decision(&ack, "read_command").await {
            Journal::add(&self.shared.journal.reads_checked);
            if decision.is_none() {
                self.shared.journal.stale(format!(
                    "GET /v1/commands/{} with its own token answered 404",
                    ack.command_id
                ));
            }
        }
    }

    /// The decision read with the write's token: `Some(None)` is a 404, `None` no usable
    /// answer (logged as a failed request).
    async fn decision(&mut self, ack: &Ack, operation: &'static str) -> Option<Option<Decision>> {
        let path = format!("/v1/commands/{}", ack.command_id);
        let request = self
            .shared
            .query
            .request(Method::GET, &path)
            .header(CONSISTENCY_TOKEN, ack.token.clone());
        let journal = &self.shared.journal;
        match self
            .shared
            .patient(operation, Phase::Load)
            .send(&mut self.query, &request)
            .await
        {
            Sent::Answer(answer) if answer.status == StatusCode::OK => {
                match Decision::parse(&answer.body) {
                    Some(decision) => Some(Some(decision)),
                    None => {
                        journal.failed(operation, BAD_ANSWER, Phase::Load);
                        None
                    }
                }
            }
            Sent::Answer(answer) if answer.status == StatusCode::NOT_FOUND => Some(None),
            Sent::Answer(answer) => {
                journal.failed(operation, answer.status.as_str(), Phase::Load);
                None
            }
            Sent::GaveUp | Sent::Unreachable(_) => {
                Journal::add(&journal.gave_up);
                journal.example(format!("{operation}: gave up on GET {path}"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_outside_the_contract_are_refused() {
        assert_eq!(
            Decision::parse(br#"{"command_id":"x","status":"applied","version":3}"#),
            Some(Decision::Applied)
        );
        assert_eq!(
            Decision::parse(br#"{"status":"rejected","reason":"version_conflict"}"#),
            Some(Decision::Rejected("version_conflict".to_owned()))
        );
        for bad in [
            &br#"{"status":"rejected","reason":"bored"}"#[..],
            br#"{"status":"rejected"}"#,
            br#"{"status":"pending"}"#,
            b"not json",
        ] {
            assert_eq!(Decision::parse(bad), None);
        }
    }
}
