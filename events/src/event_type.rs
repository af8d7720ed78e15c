//! The kinds of event: the [`EventType`] an envelope's `type` names, its stable wire name and
//! the schema version this code writes for it. The events, the upcasters and the envelope all
//! name a type by it.

/// The kinds of event, without their payloads: what an envelope's `type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    UserRegistered,
    UserProfileUpdated,
    UserDeleted,
    PostPublished,
    PostEdited,
    PostDeleted,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::UserRegistered,
        EventType::UserProfileUpdated,
        EventType::UserDeleted,
        EventType::PostPublished,
        EventType::PostEdited,
        EventType::PostDeleted,
    ];

    /// The stable wire name.
    pub fn name(self) -> &'static str {
        match self {
            EventType::UserRegistered => types::USER_REGISTERED,
            EventType::UserProfileUpdated => types::USER_PROFILE_UPDATED,
            EventType::UserDeleted => types::USER_DELETED,
            EventType::PostPublished => types::POST_PUBLISHED,
            EventType::PostEdited => types::POST_EDITED,
            EventType::PostDeleted => types::POST_DELETED,
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The schema version this code writes, which is the newest there is; older ones are upcast
    /// on decoding. This is the one place a version is declared. Raising one takes an upcaster
    /// from the previous version (`upcast.rs`) and a corpus file for the new one
    /// (`events/corpus/`); the tests fail until both are there.
    pub fn schema_version(self) -> u16 {
        match self {
            EventType::UserRegistered => 1,
            EventType::UserProfileUpdated => 1,
            EventType::UserDeleted => 1,
            EventType::PostPublished => 2,
            EventType::PostEdited => 1,
            EventType::PostDeleted => 1,
        }
    }
}

/// Wire names of the event types.
pub mod types {
    pub const USER_REGISTERED: &str = "user.registered";
    pub const USER_PROFILE_UPDATED: &str = "user.profile_updated";
    pub const USER_DELETED: &str = "user.deleted";
    pub const POST_PUBLISHED: &str = "post.published";
    pub const POST_EDITED: &str = "post.edited";
    pub const POST_DELETED: &str = "post.deleted";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_listed_once_and_found_by_its_name() {
        // Exhaustive: a new variant does not compile until it gets a place here, which is the
        // reminder to give it the same place in `ALL`.
        fn index(event_type: EventType) -> usize {
            match event_type {
                EventType::UserRegistered => 0,
                EventType::UserProfileUpdated => 1,
                EventType::UserDeleted => 2,
                EventType::PostPublished => 3,
                EventType::PostEdited => 4,
                EventType::PostDeleted => 5,
            }
        }
        for (i, event_type) in EventType::ALL.into_iter().enumerate() {
            assert_eq!(index(event_type), i);
            assert_eq!(EventType::from_name(event_type.name()), Some(event_type));
        }
        assert_eq!(EventType::from_name("post.liked"), None);
    }
}
