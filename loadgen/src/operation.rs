//! [`Operation`]: the kinds of request the report counts separately.

/// What a measured request was. Each has its own counters and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// `GET /v1/posts/{id}`
    ReadPost,
    /// `GET /v1/users/{id}`
    ReadUser,
    /// `GET /v1/users/{id}/posts?limit=20`
    ReadUserPosts,
    /// `GET /v1/posts?limit=20`
    ReadFeed,
    /// `POST /v1/users/{id}/posts`
    CreatePost,
    /// `PATCH /v1/users/{id}/posts/{post_id}`
    EditPost,
    /// `DELETE /v1/users/{id}/posts/{post_id}`
    DeletePost,
    /// From a write's 202 to `GET /v1/commands/{id}` answering 200 with its consistency token.
    VisibilityLag,
}

/// Which side an operation loads; reports and plots total by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Read,
    Write,
    Lag,
}

impl Operation {
    pub const COUNT: usize = 8;

    pub const ALL: [Operation; Operation::COUNT] = [
        Operation::ReadPost,
        Operation::ReadUser,
        Operation::ReadUserPosts,
        Operation::ReadFeed,
        Operation::CreatePost,
        Operation::EditPost,
        Operation::DeletePost,
        Operation::VisibilityLag,
    ];

    /// The read kinds in the order of `--read-mix`'s weights.
    pub const READS: [Operation; 4] = [
        Operation::ReadPost,
        Operation::ReadUser,
        Operation::ReadUserPosts,
        Operation::ReadFeed,
    ];

    /// The write kinds in the order of `--write-mix`'s weights.
    pub const WRITES: [Operation; 3] = [
        Operation::CreatePost,
        Operation::EditPost,
        Operation::DeletePost,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The name in the report and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ReadPost => "read_post",
            Operation::ReadUser => "read_user",
            Operation::ReadUserPosts => "read_user_posts",
            Operation::ReadFeed => "read_feed",
            Operation::CreatePost => "create_post",
            Operation::EditPost => "edit_post",
            Operation::DeletePost => "delete_post",
            Operation::VisibilityLag => "visibility_lag",
        }
    }

    /// The name in the one-line progress, which must fit a terminal.
    pub fn short_name(self) -> &'static str {
        match self {
            Operation::ReadPost => "post",
            Operation::ReadUser => "user",
            Operation::ReadUserPosts => "uposts",
            Operation::ReadFeed => "feed",
            Operation::CreatePost => "create",
            Operation::EditPost => "edit",
            Operation::DeletePost => "delete",
            Operation::VisibilityLag => "lag",
        }
    }

    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }

    pub fn side(self) -> Side {
        match self {
            Operation::ReadPost
            | Operation::ReadUser
            | Operation::ReadUserPosts
            | Operation::ReadFeed => Side::Read,
            Operation::CreatePost | Operation::EditPost | Operation::DeletePost => Side::Write,
            Operation::VisibilityLag => Side::Lag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_the_list_and_names_round_trip() {
        for (position, op) in Operation::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), position);
            assert_eq!(Operation::from_name(op.name()), Some(op));
        }
        assert!(Operation::READS.iter().all(|op| op.side() == Side::Read));
        assert!(Operation::WRITES.iter().all(|op| op.side() == Side::Write));
    }
}
