//! The one text form of a UUID this service takes, in a path and in a token's `sub`: the
//! hyphenated 8-4-4-4-12.

use uuid::Uuid;

/// Only the canonical 8-4-4-4-12 form, in either letter case; the braced, URN and
/// unhyphenated forms `Uuid::parse_str` also takes are refused, so that one resource has one
/// path (up to case).
pub fn parse_hyphenated_uuid(text: &str) -> Option<Uuid> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if shaped {
        Uuid::try_parse(text).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ids_must_be_hyphenated_uuids_and_come_out_lower_case() {
        let id = parse_hyphenated_uuid("0190B6A0-ABCD-7000-8000-00000000000F").expect("upper case");
        assert_eq!(id.to_string(), "0190b6a0-abcd-7000-8000-00000000000f");
        for bad in [
            "",
            "not-a-uuid",
            "0190b6a0abcd7000800000000000000f",
            "{0190b6a0-abcd-7000-8000-00000000000f}",
            "urn:uuid:0190b6a0-abcd-7000-8000-00000000000f",
            "0190b6a0-abcd-7000-8000-00000000000g",
            "0190b6a0-abcd-7000-8000-00000000000f0",
            "0190b6a0+abcd-7000-8000-00000000000f",
            "0190b6a0-abcd-7000-8000-0000000000é",
        ] {
            assert_eq!(parse_hyphenated_uuid(bad), None, "{bad:?}");
        }
    }
}
