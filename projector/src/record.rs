//! A record of the log as the projector holds it, and a dead letter: a record it will not
//! project, kept with the reason.
//!
//! The consumer loop and a replay's reader both copy what they read into [`Record`]s; a batch
//! decides them and dead-letters what it cannot.

use rdkafka::message::{Headers, Message};

/// One record as read from Kafka, owned so it can outlive the consumer's buffer.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Record {
    /// Copies a consumed message out of librdkafka's buffer.
    pub fn from_message(message: &impl Message) -> Record {
        Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// A record that will not be projected, and why.
pub struct DeadLetter<'a> {
    pub record: &'a Record,
    pub error: String,
}
