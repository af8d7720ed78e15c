//! The benchmark's events: the expected load's write mix from a seeded generator, so that the
//! same seed gives the same log, in memory or on the broker.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use events::{
    Envelope, Event, PostEdited, PostFormat, PostPublished, UserProfileUpdated, UserRegistered,
};
use uuid::Uuid;

/// A post body and a bio: the expected load's 1 KB per write.
const TEXT_BYTES: usize = 1000;

/// The expected load's write mix as events, in the order a command API would append them: users
/// sign up first (2 % of the log), then publish, edit, update and delete, with some stale
/// `If-Match` and some retried commands, so that rejections and duplicates are decided too.
pub struct Workload {
    random: SplitMix64,
    users: Vec<UserState>,
    to_register: u64,
    /// Recent envelopes, re-sent as a client's retry would be.
    recent: VecDeque<Envelope>,
    clock: DateTime<Utc>,
}

struct UserState {
    id: Uuid,
    /// Live posts and their versions, as the projector will decide them.
    posts: Vec<(Uuid, i64)>,
}

impl Workload {
    pub fn new(seed: u64, events: u64) -> Workload {
        Workload {
            random: SplitMix64(seed),
            users: Vec::new(),
            to_register: (events / 50).max(1),
            recent: VecDeque::new(),
            clock: DateTime::<Utc>::from_timestamp(1_790_000_000, 0).unwrap_or_default(),
        }
    }

    pub fn next_event(&mut self) -> Envelope {
        self.clock += chrono::Duration::microseconds(1500);
        let envelope = self.choose();
        if self.recent.len() == 64 {
            self.recent.pop_front();
        }
        self.recent.push_back(envelope.clone());
        envelope
    }

    fn choose(&mut self) -> Envelope {
        if self.to_register > 0 {
            self.to_register -= 1;
            let id = self.random.uuid();
            self.users.push(UserState {
                id,
                posts: Vec::new(),
            });
            let event = Event::UserRegistered(UserRegistered {
                display_name: self.random.text(20),
                bio: Some(self.random.text(TEXT_BYTES)),
            });
            return self.envelope(id, id, event, None);
        }
        let roll = self.random.below(100);
        if roll < 2 {
            if let Some(retry) = self.recent.front().cloned() {
                return retry;
            }
        }
        let user = self.random.below(self.users.len() as u64) as usize;
        let user_id = self.users[user].id;
        let has_posts = !self.users[user].posts.is_empty();
        match roll {
            2..=9 => {
                let event = Event::UserProfileUpdated(UserProfileUpdated {
                    display_name: None,
                    bio: Some(self.random.text(TEXT_BYTES)),
                });
                self.envelope(user_id, user_id, event, None)
            }
            10..=34 if has_posts => {
                let index = self.random.below(self.users[user].posts.len() as u64) as usize;
                let (post_id, version) = self.users[user].posts[index];
                let expected = match self.random.below(10) {
                    0..=6 => Some(version),
                    7 => Some(version - 1).filter(|v| *v >= 1).or(Some(version + 1)),
                    _ => None,
                };
                // A stale If-Match is rejected; every other edit applies.
                if expected.is_none_or(|e| e == version) {
                    self.users[user].posts[index].1 += 1;
                }
                let event = Event::PostEdited(PostEdited {
                    title: Some(self.random.text(60)),
                    body: Some(self.random.text(TEXT_BYTES)),
                });
                self.envelope(post_id, user_id, event, expected)
            }
            35..=44 if has_posts => {
                let index = self.random.below(self.users[user].posts.len() as u64) as usize;
                let (post_id, _) = self.users[user].posts.swap_remove(index);
                self.envelope(post_id, user_id, Event::PostDeleted, None)
            }
            _ => {
                let post_id = self.random.uuid();
                self.users[user].posts.push((post_id, 1));
                let event = Event::PostPublished(PostPublished {
                    title: self.random.text(60),
                    body: self.random.text(TEXT_BYTES),
                    format: PostFormat::Plain,
                });
                self.envelope(post_id, user_id, event, None)
            }
        }
    }

    fn envelope(
        &mut self,
        aggregate_id: Uuid,
        partition_key: Uuid,
        event: Event,
        expected_version: Option<i64>,
    ) -> Envelope {
        Envelope {
            event_id: self.random.uuid(),
            aggregate_id,
            partition_key,
            command_id: self.random.uuid(),
            idempotency: None,
            expected_version,
            accepted_at: self.clock,
            event,
        }
    }
}

/// A small, fast, seeded generator: the benchmark's log is the same for the same seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn uuid(&mut self) -> Uuid {
        let bytes = (u128::from(self.next()) << 64 | u128::from(self.next())).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// About `len` bytes of lower-case words.
    fn text(&mut self, len: usize) -> String {
        const WORDS: &[&str] = &[
            "event",
            "log",
            "replay",
            "kafka",
            "partition",
            "offset",
            "read",
            "model",
            "user",
            "post",
            "version",
            "command",
            "query",
            "scale",
            "million",
            "batch",
            "commit",
            "decide",
            "apply",
            "stream",
            "projection",
            "consistent",
            "token",
            "durable",
        ];
        let mut text = String::with_capacity(len + 16);
        while text.len() < len {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[self.below(WORDS.len() as u64) as usize]);
        }
        text.truncate(len);
        text
    }
}
