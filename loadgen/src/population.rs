//! [`Population`]: the users and posts the workload reads and edits, and the ways to get one:
//! seed it through the command API ([`seed`]), read it back from a file ([`Population::load`],
//! checked with [`still_exists`]), or make up ids ([`Population::made_up`]).
//!
//! Seeding writes each user's posts one after another, so the last `202` of a user is that
//! user's last write in the log (one user's events share a partition, in order). Waiting until
//! every user's last write reads back with its consistency token therefore proves the whole
//! population is in the read model, without ever looking inside a token.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::header::AUTHORIZATION;
use hyper::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::{Connection, Endpoint, RequestBuilder, TransportError};
use crate::contract::{Accepted, CONSISTENCY_TOKEN, IDEMPOTENCY_KEY, PostBody, post_text};
use crate::sampling::Rng;
use crate::status_line::StatusLine;

/// Format tag of the population file, so a file from an incompatible release is refused.
const FILE_FORMAT: &str = "loadgen-population/1";

/// A user of the population, with the access token its sign-up answered: every write of the user
/// sends it. A user without one cannot write, so a writing run seeds anew rather than use a file
/// that holds such users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

impl User {
    /// `Authorization: Bearer …` for this user's writes, when the API gave a token.
    pub fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.access_token {
            Some(token) => request.header(AUTHORIZATION, format!("Bearer {token}")),
            None => request,
        }
    }
}

/// A post of the population; `author` is an index into [`Population::users`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Post {
    pub id: Uuid,
    pub author: usize,
}

/// Users and posts, hottest first: the Zipf draws pick low indices most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Population {
    pub users: Vec<User>,
    pub posts: Vec<Post>,
}

#[derive(Serialize, Deserialize)]
struct PopulationFile {
    format: String,
    command_url: String,
    #[serde(flatten)]
    population: Population,
}

impl Population {
    /// Random ids, for a server that answers any id (`loadgen bare-server`): nothing is created.
    pub fn made_up(users: usize, posts: usize, rng: &mut Rng) -> Population {
        let users: Vec<User> = (0..users)
            .map(|_| User {
                id: rng.uuid(),
                access_token: None,
            })
            .collect();
        let posts = (0..posts)
            .map(|_| Post {
                id: rng.uuid(),
                author: rng.below(users.len().max(1)),
            })
            .collect();
        Population { users, posts }
    }

    pub fn author(&self, post: &Post) -> &User {
        &self.users[post.author]
    }

    pub fn load(path: &Path) -> anyhow::Result<Population> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the population file {}", path.display()))?;
        let file: PopulationFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a population file", path.display()))?;
        if file.format != FILE_FORMAT {
            bail!(
                "{} has format `{}`, this loadgen reads `{FILE_FORMAT}`",
                path.display(),
                file.format
            );
        }
        let population = file.population;
        if population.users.is_empty() || population.posts.is_empty() {
            bail!("{} holds no users or no posts", path.display());
        }
        if let Some(post) = population
            .posts
            .iter()
            .find(|post| post.author >= population.users.len())
        {
            bail!(
                "{}: post {} names author #{}, past the users",
                path.display(),
                post.id,
                post.author
            );
        }
        Ok(population)
    }

    pub fn save(&self, path: &Path, command_url: &str) -> anyhow::Result<()> {
        let file = PopulationFile {
            format: FILE_FORMAT.to_owned(),
            command_url: command_url.to_owned(),
            population: self.clone(),
        };
        let text = serde_json::to_vec(&file).context("cannot encode the population")?;
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the population file {}", path.display()))
    }
}

/// True when a few users and posts of the population (first, middle, last) still read back:
/// a file from another deployment, or from before the read model was reset, fails this.
pub async fn still_exists(
    population: &Population,
    query: &Endpoint,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let pick = |len: usize| [0, len / 2, len.saturating_sub(1)];
    let mut paths: Vec<String> = pick(population.users.len())
        .into_iter()
        .map(|i| format!("/v1/users/{}", population.users[i].id))
        .collect();
    paths.extend(
        pick(population.posts.len())
            .into_iter()
            .map(|i| format!("/v1/posts/{}", population.posts[i].id)),
    );
    let mut connection = Connection::new(query.clone());
    for path in paths {
        let answer = connection
            .send(query.request(Method::GET, &path), timeout)
            .await
            .with_context(|| format!("cannot reach the query API at {}", query.url()))?;
        if answer.status != StatusCode::OK {
            eprintln!(
                "population check: GET {path} answered {}, not 200",
                answer.status
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// What seeding needs to know.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub users: usize,
    pub posts: usize,
    pub post_bytes: usize,
    pub connections: usize,
    pub timeout: Duration,
    /// How long to wait for the read model to show everything.
    pub visibility_wait: Duration,
}

/// Counters the progress line reads while seeding runs.
#[derive(Debug, Default)]
struct SeedProgress {
    users: AtomicUsize,
    posts: AtomicUsize,
    visible: AtomicUsize,
}

/// A user's last write: the resource to read back and the token that proves it applied.
#[derive(Debug, Clone)]
struct LastWrite {
    path: String,
    token: String,
}

/// Creates the users, then each user's posts (one after another per user, users in parallel),
/// then waits until every user's last write reads back with its consistency token.
pub async fn seed(
    plan: &SeedPlan,
    command: &Endpoint,
    query: &Endpoint,
) -> anyhow::Result<Population> {
    let started = Instant::now();
    let seeder = Arc::new(Seeder {
        plan: plan.clone(),
        command: command.clone(),
        query: query.clone(),
        // Keys make retries after a 503 or a lost answer safe; the nonce keeps two seedings of
        // the same deployment from folding into one population.
        nonce: Uuid::now_v7().simple().to_string(),
        post_text: post_text(plan.post_bytes),
        progress: SeedProgress::default(),
    });
    let reporter = tokio::spawn(Arc::clone(&seeder).report_progress());
    let result = Arc::clone(&seeder).phases().await;
    reporter.abort();
    let mut line = StatusLine::new();
    match &result {
        Ok(_) => line.show(&format!(
            "seeded {} users and {} posts in {:.1} s; the read model shows them",
            plan.users,
            plan.posts,
            started.elapsed().as_secs_f64()
        )),
        Err(_) => line.show("seeding failed"),
    }
    line.finish();
    result
}

/// Everything the seeding tasks share.
#[derive(Debug)]
struct Seeder {
    plan: SeedPlan,
    command: Endpoint,
    query: Endpoint,
    nonce: String,
    post_text: String,
    progress: SeedProgress,
}

impl Seeder {
    async fn report_progress(self: Arc<Self>) {
        let mut line = StatusLine::new();
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            line.show(&format!(
                "seeding [{:>4}s] users {}/{}, posts {}/{}, visible {}/{}",
                started.elapsed().as_secs(),
                self.progress.users.load(Ordering::Relaxed),
                self.plan.users,
                self.progress.posts.load(Ordering::Relaxed),
                self.plan.posts,
                self.progress.visible.load(Ordering::Relaxed),
                self.plan.users,
            ));
        }
    }

    async fn phases(self: Arc<Self>) -> anyhow::Result<Population> {
        let plan = &self.plan;
        let made = run_parallel(plan.users, plan.connections, &self, Seeder::create_users).await?;
        let mut users = vec![None; plan.users];
        let mut last_writes = vec![None; plan.users];
        for (i, accepted) in made {
            users[i] = Some(User {
                id: accepted.aggregate_id,
                access_token: accepted.access_token,
            });
            last_writes[i] = Some(LastWrite {
                path: format!("/v1/users/{}", accepted.aggregate_id),
                token: accepted.consistency_token,
            });
        }
        let users: Arc<Vec<User>> = Arc::new(users.into_iter().flatten().collect());
        if users.len() != plan.users {
            bail!("seeding lost track of some users");
        }

        let made = run_parallel(plan.users, plan.connections, &self, {
            let users = Arc::clone(&users);
            move |seeder, next| seeder.create_posts(Arc::clone(&users), next)
        })
        .await?;
        let mut posts = vec![None; plan.posts];
        for (j, author, accepted) in made {
            posts[j] = Some(Post {
                id: accepted.aggregate_id,
                author,
            });
            // An author's posts were written one after another in j, so the highest j (the
            // last below `posts` in steps of `users`) is the author's last write.
            if j + plan.users >= plan.posts {
                last_writes[author] = Some(LastWrite {
                    path: format!("/v1/posts/{}", accepted.aggregate_id),
                    token: accepted.consistency_token,
                });
            }
        }
        let posts: Vec<Post> = posts.into_iter().flatten().collect();
        if posts.len() != plan.posts {
            bail!("seeding lost track of some posts");
        }

        let last_writes: Arc<Vec<LastWrite>> =
            Arc::new(last_writes.into_iter().flatten().collect());
        let deadline = Instant::now() + plan.visibility_wait;
        run_parallel(last_writes.len(), plan.connections, &self, {
            let last_writes = Arc::clone(&last_writes);
            move |seeder, next| seeder.wait_visible(Arc::clone(&last_writes), deadline, next)
        })
        .await?;

        let users = Arc::try_unwrap(users).unwrap_or_else(|shared| (*shared).clone());
        Ok(Population { users, posts })
    }

    async fn create_users(
        self: Arc<Self>,
        next: Arc<Claims>,
    ) -> anyhow::Result<Vec<(usize, Accepted)>> {
        let mut connection = Connection::new(self.command.clone());
        let mut made = Vec::new();
        while let Some(i) = next.claim() {
            let body = serde_json::json!({
                "display_name": format!("loadgen user {i}"),
                "bio": "Seeded by loadgen.",
            });
            let request = self
                .command
                .request(Method::POST, "/v1/users")
                .header(IDEMPOTENCY_KEY, format!("loadgen-{}-user-{i}", self.nonce))
                .json(Bytes::from(body.to_string()));
            let accepted = write(&mut connection, request, self.plan.timeout)
                .await
                .with_context(|| format!("seeding user {i}"))?;
            made.push((i, accepted));
            self.progress.users.fetch_add(1, Ordering::Relaxed);
        }
        Ok(made)
    }

    /// Creates the posts of each claimed author, in order.
    async fn create_posts(
        self: Arc<Self>,
        users: Arc<Vec<User>>,
        next: Arc<Claims>,
    ) -> anyhow::Result<Vec<(usize, usize, Accepted)>> {
        let mut connection = Connection::new(self.command.clone());
        let mut made = Vec::new();
        // Post j belongs to user j % users: every user gets a share, and the hottest posts (low
        // j) belong to the hottest users.
        while let Some(author) = next.claim() {
            let user = &users[author];
            for j in (author..self.plan.posts).step_by(self.plan.users) {
                let body = PostBody {
                    title: &format!("loadgen post {j}"),
                    body: &self.post_text,
                };
                let path = format!("/v1/users/{}/posts", user.id);
                let request = user
                    .authorize(self.command.request(Method::POST, &path))
                    .header(IDEMPOTENCY_KEY, format!("loadgen-{}-post-{j}", self.nonce))
                    .json(body.encode());
                let accepted = write(&mut connection, request, self.plan.timeout)
                    .await
                    .with_context(|| format!("seeding post {j}"))?;
                self.progress.posts.fetch_add(1, Ordering::Relaxed);
                made.push((j, author, accepted));
            }
        }
        Ok(made)
    }

    async fn wait_visible(
        self: Arc<Self>,
        last_writes: Arc<Vec<LastWrite>>,
        deadline: Instant,
        next: Arc<Claims>,
    ) -> anyhow::Result<Vec<()>> {
        let mut connection = Connection::new(self.query.clone());
        while let Some(i) = next.claim() {
            wait_visible(
                &mut connection,
                &last_writes[i],
                deadline,
                self.plan.timeout,
            )
            .await?;
            self.progress.visible.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Vec::new())
    }
}

/// Indices below a total, handed out once each to whichever task asks next.
#[derive(Debug)]
struct Claims {
    next: AtomicUsize,
    total: usize,
}

impl Claims {
    fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }
}

/// Runs up to `connections` tasks of `task` that share one [`Claims`] of `total` indices; returns
/// all they made, or the first error (the other tasks are then aborted).
async fn run_parallel<F, Fut, T>(
    total: usize,
    connections: usize,
    seeder: &Arc<Seeder>,
    task: F,
) -> anyhow::Result<Vec<T>>
where
    F: Fn(Arc<Seeder>, Arc<Claims>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<T>>> + Send + 'static,
    T: Send + 'static,
{
    let claims = Arc::new(Claims {
        next: AtomicUsize::new(0),
        total,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.clamp(1, total.max(1)) {
        tasks.spawn(task(Arc::clone(seeder), Arc::clone(&claims)));
    }
    let mut made = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(part)) => made.extend(part),
            Ok(Err(error)) => {
                tasks.abort_all();
                return Err(error);
            }
            Err(join_error) => {
                tasks.abort_all();
                bail!("a seeding task failed: {join_error}");
            }
        }
    }
    Ok(made)
}

/// Attempts at one seeding write; the waits between them add up to about 6 s.
const WRITE_ATTEMPTS: u32 = 6;

/// One seeding write, retried with its idempotency key while the answer says "try again".
async fn write(
    connection: &mut Connection,
    request: RequestBuilder,
    timeout: Duration,
) -> anyhow::Result<Accepted> {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=WRITE_ATTEMPTS {
        let last = attempt == WRITE_ATTEMPTS;
        match connection.send(request.clone(), timeout).await {
            Ok(answer) if answer.status == StatusCode::ACCEPTED => {
                return serde_json::from_slice(&answer.body).context("the 202 answer's body");
            }
            Ok(answer)
                if !last
                    && (answer.status == StatusCode::SERVICE_UNAVAILABLE
                        || answer.status == StatusCode::TOO_MANY_REQUESTS) => {}
            Ok(answer) => bail!(
                "the command API answered {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ),
            Err(error) if !last => {
                // Nothing listening at all is not worth six attempts.
                if matches!(error, TransportError::Connect(_)) && attempt >= 3 {
                    return Err(unreachable(connection, error));
                }
            }
            Err(error) => return Err(unreachable(connection, error)),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
    bail!("no attempt got an answer")
}

fn unreachable(connection: &Connection, error: TransportError) -> anyhow::Error {
    anyhow::Error::new(error).context(format!(
        "cannot reach the command API at {}",
        connection.endpoint().url()
    ))
}

/// Reads `write.path` with its token until the query API answers 200 (a 503 means its own wait
/// for the projector ran out: ask again, up to `deadline`).
async fn wait_visible(
    connection: &mut Connection,
    write: &LastWrite,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    loop {
        let request = connection
            .endpoint()
            .request(Method::GET, &write.path)
            .header(CONSISTENCY_TOKEN, write.token.clone());
        let outcome = connection.send(request, timeout).await;
        match outcome {
            Ok(answer) if answer.status == StatusCode::OK => return Ok(()),
            Ok(answer) if answer.status != StatusCode::SERVICE_UNAVAILABLE => bail!(
                "GET {} with its consistency token answered {} (was the write rejected?): {}",
                write.path,
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ),
            Err(TransportError::Connect(error)) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot reach the query API at {}",
                    connection.endpoint().url()
                )));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "the read model did not show {} within the seeding wait",
                write.path
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_populations_repeat_with_the_seed() {
        let a = Population::made_up(10, 50, &mut Rng::new(5));
        let b = Population::made_up(10, 50, &mut Rng::new(5));
        assert_eq!(a, b);
        assert_eq!(a.users.len(), 10);
        assert!(a.posts.iter().all(|post| post.author < 10));
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("loadgen-population-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("population.json");
        let mut population = Population::made_up(3, 7, &mut Rng::new(1));
        population.users[0].access_token = Some("secret".to_owned());
        population
            .save(&path, "http://127.0.0.1:8080")
            .expect("save");
        assert_eq!(Population::load(&path).expect("load"), population);

        std::fs::write(
            &path,
            r#"{"format":"other","command_url":"","users":[],"posts":[]}"#,
        )
        .expect("write");
        assert!(Population::load(&path).is_err());
        assert!(Population::load(&dir.join("missing.json")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_token_becomes_a_bearer_header() {
        let endpoint = Endpoint::resolve("http://127.0.0.1:1")
            .await
            .expect("endpoint");
        let user = User {
            id: Uuid::nil(),
            access_token: Some("abc".to_owned()),
        };
        let request = user.authorize(endpoint.request(Method::POST, "/v1/users"));
        assert!(format!("{request:?}").contains("Bearer abc"));
        let anonymous = User {
            access_token: None,
            ..user
        };
        let request = anonymous.authorize(endpoint.request(Method::POST, "/v1/users"));
        assert!(!format!("{request:?}").contains("Bearer"));
    }
}
