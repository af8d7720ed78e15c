//! [`Offsets`]: how far the projector has got on our topic, as the next offset to apply per
//! partition. The watermarks, the cache's fills, the replicas' positions and the status page's
//! looks are all told in it.

use std::collections::BTreeMap;

/// Next offset to apply, per partition of our topic.
pub type Offsets = BTreeMap<i32, i64>;
