//! The route templates of the six writes: the paths the router serves them at, which the
//! idempotency fingerprint also hashes (`Write::route`).

pub const USERS: &str = "/v1/users";
pub const USER: &str = "/v1/users/{user_id}";
pub const USER_POSTS: &str = "/v1/users/{user_id}/posts";
pub const USER_POST: &str = "/v1/users/{user_id}/posts/{post_id}";
