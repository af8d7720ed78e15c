//! [`Workload`]: which request comes next and what its answer means. Drawing the operation, the
//! item (Zipf over the population) and the body, sending it, and judging the answer.
//!
//! Writes touch the population only in ways that keep it readable: edits change the population's posts,
//! deletes remove only posts this run created. So every read of the population should be a 200,
//! and a 404 is an error, unless it is a post this run deleted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::client::{Answer, Connection, Endpoint, TransportError};
use crate::config::RunConfig;
use crate::contract::{Accepted, PostBody, post_text};
use crate::operation::Operation;
use crate::population::{Population, Post};
use crate::recorder::{Failure, Outcome};
use crate::sampling::{Rng, Zipf};

/// Items per page on the list reads: the API's default page.
const PAGE_LIMIT: u32 = 20;

/// A post this run created, which the run may delete.
#[derive(Debug, Clone, Copy)]
struct CreatedPost {
    id: Uuid,
    author: usize,
}

/// A write whose visibility lag is to be measured: sent to the lag probes after its 202.
#[derive(Debug)]
pub struct LagProbe {
    pub command_id: Uuid,
    pub token: String,
    /// When the 202 arrived: the lag starts here.
    pub accepted_at: Instant,
    /// When the write itself started, which decides whether the lag is measured (warm-up).
    pub write_started: Instant,
}

/// A task's two connections: writes go to the command API, reads to the query API.
#[derive(Debug)]
pub struct Connections {
    pub command: Connection,
    pub query: Connection,
}

impl Connections {
    pub fn new(command: &Endpoint, query: &Endpoint) -> Connections {
        Connections {
            command: Connection::new(command.clone()),
            query: Connection::new(query.clone()),
        }
    }
}

/// Cumulative weights, for drawing one of a few kinds with a single uniform number.
#[derive(Debug, Clone)]
struct Mix<const N: usize> {
    cumulative: [f64; N],
}

impl<const N: usize> Mix<N> {
    fn new(weights: [f64; N]) -> Mix<N> {
        let total: f64 = weights.iter().sum();
        let mut running = 0.0;
        let cumulative = weights.map(|w| {
            running += w / total;
            running
        });
        Mix { cumulative }
    }

    fn draw(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cumulative
            .iter()
            .position(|&c| u < c)
            // Rounding may leave the last bound a hair under 1.0; pick the last kind with weight.
            .unwrap_or_else(|| {
                self.cumulative
                    .iter()
                    .rposition(|&c| c > 0.0)
                    .unwrap_or(N - 1)
            })
    }
}

/// The workload of one run, shared by its tasks.
#[derive(Debug)]
pub struct Workload {
    population: Population,
    users: Zipf,
    posts: Zipf,
    read_share: f64,
    reads: Mix<4>,
    writes: Mix<3>,
    lag_sample: f64,
    post_text: String,
    timeout: Duration,
    created: Mutex<Vec<CreatedPost>>,
    deleted: Mutex<HashSet<Uuid>>,
    lag_dropped: AtomicU64,
}

impl Workload {
    pub fn new(config: &RunConfig, population: Population) -> Workload {
        Workload {
            users: Zipf::new(population.users.len(), config.zipf),
            posts: Zipf::new(population.posts.len(), config.zipf),
            population,
            read_share: config.read_share(),
            reads: Mix::new(config.read_mix.weights()),
            writes: Mix::new(config.write_mix.weights()),
            lag_sample: config.lag_sample,
            post_text: post_text(config.post_bytes as usize),
            timeout: config.timeout,
            created: Mutex::new(Vec::new()),
            deleted: Mutex::new(HashSet::new()),
            lag_dropped: AtomicU64::new(0),
        }
    }

    /// The operations this workload can send: the report lists them even when none finished.
    pub fn operations(config: &RunConfig) -> Vec<Operation> {
        let mut ops = Vec::new();
        if config.sends_reads() {
            let weights = config.read_mix.weights();
            ops.extend(
                (0..4)
                    .filter(|&i| weights[i] > 0.0)
                    .map(|i| Operation::READS[i]),
            );
        }
        if config.sends_writes() {
            let weights = config.write_mix.weights();
            ops.extend(
                (0..3)
                    .filter(|&i| weights[i] > 0.0)
                    .map(|i| Operation::WRITES[i]),
            );
            if config.lag_sample > 0.0 {
                ops.push(Operation::VisibilityLag);
            }
        }
        ops
    }

    /// Draws the next operation.
    pub fn next_operation(&self, rng: &mut Rng) -> Operation {
        if rng.chance(self.read_share) {
            Operation::READS[self.reads.draw(rng)]
        } else {
            Operation::WRITES[self.writes.draw(rng)]
        }
    }

    /// Sends `op` and judges the answer. Returns the operation actually sent (a delete with no
    /// post of this run left to delete creates one instead). `started` is passed on to a lag
    /// probe, if this write is sampled.
    pub async fn execute(
        &self,
        op: Operation,
        rng: &mut Rng,
        connections: &mut Connections,
        lag: Option<&mpsc::Sender<LagProbe>>,
        started: Instant,
    ) -> (Operation, Outcome) {
        match op {
            Operation::ReadPost => {
                let post = &self.population.posts[self.posts.sample(rng)];
                let path = format!("/v1/posts/{}", post.id);
                let answer = self.read(connections, &path).await;
                (op, self.judge_read(answer, Some(post.id)))
            }
            Operation::ReadUser => {
                let user = &self.population.users[self.users.sample(rng)];
                let path = format!("/v1/users/{}", user.id);
                (
                    op,
                    self.judge_read(self.read(connections, &path).await, None),
                )
            }
            Operation::ReadUserPosts => {
                let user = &self.population.users[self.users.sample(rng)];
                let path = format!("/v1/users/{}/posts?limit={PAGE_LIMIT}", user.id);
                (
                    op,
                    self.judge_read(self.read(connections, &path).await, None),
                )
            }
            Operation::ReadFeed => {
                let path = format!("/v1/posts?limit={PAGE_LIMIT}");
                (
                    op,
                    self.judge_read(self.read(connections, &path).await, None),
                )
            }
            Operation::CreatePost => {
                let author = self.users.sample(rng);
                let outcome = self.create(author, rng, connections, lag, started).await;
                (op, outcome)
            }
            Operation::EditPost => {
                let post = &self.population.posts[self.posts.sample(rng)];
                (op, self.edit(post, rng, connections, lag, started).await)
            }
            Operation::DeletePost => match self.take_created(rng) {
                Some(post) => (op, self.delete(post, rng, connections, lag, started).await),
                None => {
                    let author = self.users.sample(rng);
                    let outcome = self.create(author, rng, connections, lag, started).await;
                    (Operation::CreatePost, outcome)
                }
            },
            // Lag probes are sent by the probe tasks, never drawn.
            Operation::VisibilityLag => (op, Outcome::Failed(Failure::Transport)),
        }
    }

    async fn read(
        &self,
        connections: &mut Connections,
        path: &str,
    ) -> Result<Answer, TransportError> {
        let request = connections.query.endpoint().request(Method::GET, path);
        connections.query.send(request, self.timeout).await
    }

    fn judge_read(&self, answer: Result<Answer, TransportError>, post: Option<Uuid>) -> Outcome {
        match answer {
            Ok(answer)
                if answer.status.is_success() || answer.status == StatusCode::NOT_MODIFIED =>
            {
                Outcome::Success
            }
            Ok(answer)
                if answer.status == StatusCode::NOT_FOUND
                    && post.is_some_and(|id| self.was_deleted(id)) =>
            {
                Outcome::Success
            }
            Ok(answer) => Outcome::Failed(Failure::Status(answer.status.as_u16())),
            Err(error) => Outcome::Failed(transport_failure(&error)),
        }
    }

    fn was_deleted(&self, id: Uuid) -> bool {
        self.deleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&id)
    }

    async fn create(
        &self,
        author: usize,
        rng: &mut Rng,
        connections: &mut Connections,
        lag: Option<&mpsc::Sender<LagProbe>>,
        started: Instant,
    ) -> Outcome {
        let user = &self.population.users[author];
        let title = format!("loadgen post {:016x}", rng.next_u64());
        let body = PostBody {
            title: &title,
            body: &self.post_text,
        };
        let path = format!("/v1/users/{}/posts", user.id);
        let request = user
            .authorize(connections.command.endpoint().request(Method::POST, &path))
            .json(body.encode());
        let answer = connections.command.send(request, self.timeout).await;
        let (outcome, accepted) = judge_write(answer);
        if let Some(accepted) = accepted {
            self.created
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(CreatedPost {
                    id: accepted.aggregate_id,
                    author,
                });
            self.maybe_probe(accepted, rng, lag, started);
        }
        outcome
    }

    async fn edit(
        &self,
        post: &Post,
        rng: &mut Rng,
        connections: &mut Connections,
        lag: Option<&mpsc::Sender<LagProbe>>,
        started: Instant,
    ) -> Outcome {
        let author = self.population.author(post);
        let title = format!("loadgen edit {:016x}", rng.next_u64());
        let body = PostBody {
            title: &title,
            body: &self.post_text,
        };
        let path = format!("/v1/users/{}/posts/{}", author.id, post.id);
        let request = author
            .authorize(connections.command.endpoint().request(Method::PATCH, &path))
            .json(body.encode());
        let answer = connections.command.send(request, self.timeout).await;
        let (outcome, accepted) = judge_write(answer);
        if let Some(accepted) = accepted {
            self.maybe_probe(accepted, rng, lag, started);
        }
        outcome
    }

    async fn delete(
        &self,
        post: CreatedPost,
        rng: &mut Rng,
        connections: &mut Connections,
        lag: Option<&mpsc::Sender<LagProbe>>,
        started: Instant,
    ) -> Outcome {
        let author = &self.population.users[post.author];
        // Marked before sending: a read racing the delete may already see it gone.
        self.deleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(post.id);
        let path = format!("/v1/users/{}/posts/{}", author.id, post.id);
        let request = author.authorize(
            connections
                .command
                .endpoint()
                .request(Method::DELETE, &path),
        );
        let answer = connections.command.send(request, self.timeout).await;
        let (outcome, accepted) = judge_write(answer);
        if let Some(accepted) = accepted {
            self.maybe_probe(accepted, rng, lag, started);
        }
        outcome
    }

    /// A post this run created, chosen at random and removed from the candidates.
    fn take_created(&self, rng: &mut Rng) -> Option<CreatedPost> {
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        if created.is_empty() {
            return None;
        }
        let i = rng.below(created.len());
        Some(created.swap_remove(i))
    }

    fn maybe_probe(
        &self,
        accepted: Accepted,
        rng: &mut Rng,
        lag: Option<&mpsc::Sender<LagProbe>>,
        started: Instant,
    ) {
        let Some(lag) = lag else { return };
        if !rng.chance(self.lag_sample) {
            return;
        }
        let probe = LagProbe {
            command_id: accepted.command_id,
            token: accepted.consistency_token,
            accepted_at: Instant::now(),
            write_started: started,
        };
        // A full queue means the probes cannot keep up; dropping the sample is better than
        // measuring the queue (the report counts the drops).
        if let Err(mpsc::error::TrySendError::Full(_)) = lag.try_send(probe) {
            self.lag_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Visibility-lag samples dropped because the probes' queue was full.
    pub fn lag_samples_dropped(&self) -> u64 {
        self.lag_dropped.load(Ordering::Relaxed)
    }
}

/// A write succeeded if it was accepted; its body is needed for the created id and the lag.
fn judge_write(answer: Result<Answer, TransportError>) -> (Outcome, Option<Accepted>) {
    match answer {
        Ok(answer) if answer.status == StatusCode::ACCEPTED => {
            match serde_json::from_slice::<Accepted>(&answer.body) {
                Ok(accepted) => (Outcome::Success, Some(accepted)),
                Err(_) => (Outcome::Failed(Failure::BadAnswer), None),
            }
        }
        Ok(answer) => (
            Outcome::Failed(Failure::Status(answer.status.as_u16())),
            None,
        ),
        Err(error) => (Outcome::Failed(transport_failure(&error)), None),
    }
}

pub fn transport_failure(error: &TransportError) -> Failure {
    match error {
        TransportError::Timeout => Failure::Timeout,
        TransportError::Connect(_) | TransportError::Http(_) => Failure::Transport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use clap::Parser;

    fn config(args: &[&str]) -> RunConfig {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        RunConfig::try_parse_from(all).expect("config")
    }

    #[test]
    fn the_mix_follows_its_weights() {
        let workload = Workload::new(
            &config(&["--read-ratio", "3", "--read-mix", "posts=1,feed=1"]),
            Population::made_up(10, 10, &mut Rng::new(1)),
        );
        let mut rng = Rng::new(2);
        let mut counts = [0usize; Operation::COUNT];
        let draws = 40_000;
        for _ in 0..draws {
            counts[workload.next_operation(&mut rng).index()] += 1;
        }
        let share = |op: Operation| counts[op.index()] as f64 / draws as f64;
        assert!((share(Operation::ReadPost) - 0.375).abs() < 0.02);
        assert!((share(Operation::ReadFeed) - 0.375).abs() < 0.02);
        assert_eq!(counts[Operation::ReadUser.index()], 0);
        assert!((share(Operation::CreatePost) - 0.25 * 0.6).abs() < 0.02);
        assert!((share(Operation::EditPost) - 0.25 * 0.35).abs() < 0.02);
        assert!((share(Operation::DeletePost) - 0.25 * 0.05).abs() < 0.01);
        assert_eq!(counts[Operation::VisibilityLag.index()], 0);
    }

    #[test]
    fn the_listed_operations_follow_the_flags() {
        assert_eq!(
            Workload::operations(&config(&["--reads-only", "--read-mix", "posts=100"])),
            [Operation::ReadPost]
        );
        assert_eq!(
            Workload::operations(&config(&["--writes-only", "--lag-sample", "0"])),
            Operation::WRITES
        );
        assert_eq!(Workload::operations(&config(&[])).len(), Operation::COUNT);
    }

    #[test]
    fn a_404_is_an_error_unless_this_run_deleted_the_post() {
        let workload = Workload::new(&config(&[]), Population::made_up(2, 2, &mut Rng::new(1)));
        let gone = Uuid::now_v7();
        workload
            .deleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(gone);
        let not_found = || {
            Ok(Answer {
                status: StatusCode::NOT_FOUND,
                headers: Default::default(),
                body: Bytes::new(),
            })
        };
        assert_eq!(
            workload.judge_read(not_found(), Some(gone)),
            Outcome::Success
        );
        assert_eq!(
            workload.judge_read(not_found(), Some(Uuid::now_v7())),
            Outcome::Failed(Failure::Status(404))
        );
        assert_eq!(
            workload.judge_read(not_found(), None),
            Outcome::Failed(Failure::Status(404))
        );
        let not_modified = Ok(Answer {
            status: StatusCode::NOT_MODIFIED,
            headers: Default::default(),
            body: Bytes::new(),
        });
        assert_eq!(workload.judge_read(not_modified, None), Outcome::Success);
        assert_eq!(
            workload.judge_read(Err(TransportError::Timeout), None),
            Outcome::Failed(Failure::Timeout)
        );
    }

    #[test]
    fn a_202_without_its_body_is_an_error() {
        let answer = |body: &'static str| {
            Ok(Answer {
                status: StatusCode::ACCEPTED,
                headers: Default::default(),
                body: Bytes::from_static(body.as_bytes()),
            })
        };
        let (outcome, accepted) = judge_write(answer(
            r#"{"command_id":"0190a0e4-0000-7000-8000-000000000001","aggregate_id":"0190a0e4-0000-7000-8000-000000000002","consistency_token":"v1.0.5","access_token":"t"}"#,
        ));
        assert_eq!(outcome, Outcome::Success);
        assert_eq!(accepted.and_then(|a| a.access_token).as_deref(), Some("t"));
        let (outcome, _) = judge_write(answer("{}"));
        assert_eq!(outcome, Outcome::Failed(Failure::BadAnswer));
    }
}
