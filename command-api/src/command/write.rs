//! [`Write`]: which of the six writes a request is, with the ids from its path, and what follows
//! from that alone: its method, its route template, its idempotency scope and whether `If-Match`
//! means anything for it.

use uuid::Uuid;

use super::paths;

/// One of the six writes, with the ids from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    RegisterUser,
    UpdateProfile { user_id: Uuid },
    DeleteUser { user_id: Uuid },
    PublishPost { user_id: Uuid },
    EditPost { user_id: Uuid, post_id: Uuid },
    DeletePost { user_id: Uuid, post_id: Uuid },
}

impl Write {
    pub fn method(self) -> &'static str {
        match self {
            Write::RegisterUser | Write::PublishPost { .. } => "POST",
            Write::UpdateProfile { .. } | Write::EditPost { .. } => "PATCH",
            Write::DeleteUser { .. } | Write::DeletePost { .. } => "DELETE",
        }
    }

    pub fn route(self) -> &'static str {
        match self {
            Write::RegisterUser => paths::USERS,
            Write::UpdateProfile { .. } | Write::DeleteUser { .. } => paths::USER,
            Write::PublishPost { .. } => paths::USER_POSTS,
            Write::EditPost { .. } | Write::DeletePost { .. } => paths::USER_POST,
        }
    }

    /// The ids in the path, in path order.
    pub fn path_ids(self) -> Vec<Uuid> {
        match self {
            Write::RegisterUser => vec![],
            Write::UpdateProfile { user_id }
            | Write::DeleteUser { user_id }
            | Write::PublishPost { user_id } => vec![user_id],
            Write::EditPost { user_id, post_id } | Write::DeletePost { user_id, post_id } => {
                vec![user_id, post_id]
            }
        }
    }

    /// The scope of an `Idempotency-Key`: the path's user, or nil for a sign-up, which has no
    /// user yet.
    pub fn idempotency_scope(self) -> Uuid {
        self.path_ids().first().copied().unwrap_or_else(Uuid::nil)
    }

    /// Whether `If-Match` means anything for this write (creates have no version to match).
    pub fn takes_if_match(self) -> bool {
        self.method() != "POST"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_know_their_method_route_and_scope() {
        let user_id = Uuid::now_v7();
        let post_id = Uuid::now_v7();
        assert_eq!(Write::RegisterUser.idempotency_scope(), Uuid::nil());
        assert_eq!(
            Write::EditPost { user_id, post_id }.idempotency_scope(),
            user_id
        );
        assert_eq!(
            Write::EditPost { user_id, post_id }.path_ids(),
            [user_id, post_id]
        );
        assert_eq!(Write::DeletePost { user_id, post_id }.method(), "DELETE");
        assert_eq!(Write::PublishPost { user_id }.route(), paths::USER_POSTS);
    }
}
