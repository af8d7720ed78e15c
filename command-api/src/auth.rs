//! Bearer tokens for writes: the command API issues one at sign-up and checks it, statelessly,
//! on every other write.
//!
//! A token is a JSON Web Token (RFC 7519) in JWS compact form (RFC 7515), signed with HMAC-SHA256
//! (`HS256`, RFC 7518 §3.2): header `{"alg":"HS256","typ":"JWT","kid":…}`, claims `{"sub": the
//! user's id, "iat": issued at, "exp"?: expires at}` (seconds since the epoch).
//!
//! Verification accepts exactly that shape and nothing looser, because the classic JWT holes are
//! all a verifier that lets the token choose: the algorithm must be `HS256` (so `none`, the RSA
//! family and every other algorithm are refused before any key is touched), the key is the
//! configured key named by `kid` (an unknown `kid` is refused; there is no default key), a header
//! with `crit` extensions is refused (we understand none), base64url must be unpadded and
//! canonical, and the claims are read only after the signature checked out. The signature is
//! compared in constant time (`hmac`'s `verify_slice`).
//!
//! Why hmac + sha2 and not a JWT library: both are RustCrypto's, already in Cargo.lock (sqlx's
//! SCRAM authentication uses them), so no new crypto code enters the build; `jsonwebtoken` would
//! bring RSA, elliptic curves and Ed25519 with its pure-Rust backend (or C with the other one)
//! for an algorithm we would have to forbid anyway. What is left by hand is the compact format
//! (base64url and JSON, about a page), pinned by the tests below against a token computed
//! independently.
//!
//! Keys ([`Keys`]) come from `AUTH_KEYS`: `kid:secret` pairs, comma-separated, the secret in hex
//! or base64, at least 32 bytes (RFC 7518 asks an HS256 key to be as long as the hash). The
//! first key signs; every key verifies, which is how keys rotate without downtime.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::hyphenated_uuid::parse_hyphenated_uuid;

/// The only algorithm issued and accepted.
pub const ALGORITHM: &str = "HS256";
/// The shortest secret accepted: the size of an SHA-256 output (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest token looked at; ours are about 250 bytes. Anything longer is refused before it
/// is decoded, so a client cannot make us decode or hash much.
const MAX_TOKEN_LEN: usize = 2048;
const MAX_KID_LEN: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// One signing key: a name (`kid`) and its secret. `Debug` shows the name only.
#[derive(Clone)]
pub struct Key {
    kid: String,
    secret: Arc<[u8]>,
}

impl Key {
    pub fn new(kid: &str, secret: &[u8]) -> Result<Key, String> {
        let kid_ok = !kid.is_empty()
            && kid.len() <= MAX_KID_LEN
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !kid_ok {
            return Err(format!(
                "a key name (kid) must be 1 to {MAX_KID_LEN} characters of A-Z a-z 0-9 - _ ."
            ));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret of key {kid:?} is {} bytes; it must be at least {MIN_SECRET_BYTES}",
                secret.len()
            ));
        }
        Ok(Key {
            kid: kid.to_owned(),
            secret: secret.into(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The configured keys: the first signs, all verify. Empty when none is configured.
#[derive(Debug, Clone, Default)]
pub struct Keys(Vec<Key>);

impl Keys {
    /// Parses `AUTH_KEYS`: `kid:secret[,kid:secret…]`, blanks around entries ignored, the secret
    /// in hex when it is only hex digits (an even number of them), else in base64 (standard or
    /// URL-safe, padded or not). An empty or blank text is no key. The errors never quote a secret.
    pub fn parse(text: &str) -> Result<Keys, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (index, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(format!("entry {} is empty", index + 1));
            }
            let Some((kid, secret)) = entry.split_once(':') else {
                return Err(format!(
                    "entry {} is not of the form kid:secret (no ':')",
                    index + 1
                ));
            };
            let secret = decode_secret(secret.trim()).ok_or_else(|| {
                format!(
                    "the secret of entry {} is neither hex nor base64",
                    index + 1
                )
            })?;
            let key = Key::new(kid.trim(), &secret)?;
            if keys.iter().any(|k| k.kid == key.kid) {
                return Err(format!("key name {:?} appears twice", key.kid));
            }
            keys.push(key);
        }
        Ok(Keys(keys))
    }

    pub fn new(keys: Vec<Key>) -> Keys {
        Keys(keys)
    }

    /// One key with a fresh random secret of 32 bytes from the operating system.
    pub fn generate(kid: &str) -> anyhow::Result<Keys> {
        let mut secret = [0_u8; MIN_SECRET_BYTES];
        getrandom::fill(&mut secret)
            .map_err(|e| anyhow::anyhow!("no randomness for a signing key: {e}"))?;
        Ok(Keys(vec![
            Key::new(kid, &secret).map_err(anyhow::Error::msg)?,
        ]))
    }

    /// The keys as an `AUTH_KEYS` value, secrets in hex. It reveals the secrets: for tests and
    /// tools that start instances sharing keys, never for a log.
    pub fn to_setting(&self) -> String {
        self.0
            .iter()
            .map(|k| format!("{}:{}", k.kid, hex(&k.secret)))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn kids(&self) -> Vec<&str> {
        self.0.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The signing key, if any.
    pub fn first(&self) -> Option<&Key> {
        self.0.first()
    }

    fn find(&self, kid: &str) -> Option<&Key> {
        self.0.iter().find(|k| k.kid == kid)
    }
}

fn decode_secret(text: &str) -> Option<Vec<u8>> {
    let is_hex =
        !text.is_empty() && text.len() % 2 == 0 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        return (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect();
    }
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a token was refused. The messages are safe to send and to log: they never quote the
/// token, and they hold no `"` or `\` (they go into a `WWW-Authenticate` quoted string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not HS256")]
    Algorithm,
    #[error("the token names a critical header extension this service does not know")]
    Critical,
    #[error("the token's key id (kid) is missing or unknown")]
    UnknownKey,
    #[error("the token's signature does not match")]
    Signature,
    #[error("the token's claims are malformed (sub must be a user id, iat a time)")]
    Claims,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
}

impl TokenError {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::Critical => "critical",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Claims => "claims",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
        }
    }
}

/// What a write's `Authorization` header amounted to, when it did not authenticate anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` at all (none, or another scheme): the client may not know
    /// that it needs one. RFC 6750 §3.1: no error code then.
    #[error(
        "this write needs Authorization: Bearer {{access_token}}, the token that POST /v1/users answered with"
    )]
    Missing,
    /// A bearer token was sent and is no good.
    #[error("{0}")]
    Invalid(TokenError),
}

impl AuthFailure {
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid(error) => error.label(),
        }
    }
}

/// Issues and verifies tokens with the configured keys and lifetime.
#[derive(Debug, Clone)]
pub struct Tokens {
    keys: Keys,
    ttl: Option<Duration>,
}

impl Tokens {
    /// Needs at least one key (the first signs).
    pub fn new(keys: Keys, ttl: Option<Duration>) -> anyhow::Result<Tokens> {
        anyhow::ensure!(!keys.is_empty(), "no signing key");
        Ok(Tokens { keys, ttl })
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.kids()
    }

    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// A token for `user`, issued at `now` (seconds since the epoch), signed with the first key.
    pub fn issue(&self, user: Uuid, now: i64) -> String {
        let key = &self.keys.0[0];
        let mut claims = json!({"sub": user.to_string(), "iat": now});
        if let Some(ttl) = self.ttl {
            claims["exp"] = json!(now.saturating_add(ttl.as_secs() as i64));
        }
        encode(
            &json!({"alg": ALGORITHM, "typ": "JWT", "kid": key.kid}),
            &claims,
            key,
        )
    }

    /// The user a token was issued to, if it is valid at `now`: signed by one of the keys, not
    /// expired by its `exp`, nor by `iat` plus this instance's lifetime, when one is set (so
    /// that turning a lifetime on or shortening it also bounds the tokens issued before), and
    /// not before its `nbf`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Uuid, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header = decode_json_object(header_b64)?;
        if header.get("alg").and_then(Value::as_str) != Some(ALGORITHM) {
            return Err(TokenError::Algorithm);
        }
        if header.contains_key("crit") {
            return Err(TokenError::Critical);
        }
        let key = header
            .get("kid")
            .and_then(Value::as_str)
            .and_then(|kid| self.keys.find(kid))
            .ok_or(TokenError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = key.mac();
        mac.update(header_b64.as_bytes());
        mac.update(b".");
        mac.update(claims_b64.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::Signature)?;

        // Signed by us from here on; the checks below guard against our own mistakes and old
        // tokens, not forgeries.
        let claims = decode_json_object(claims_b64)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .and_then(parse_hyphenated_uuid)
            .ok_or(TokenError::Claims)?;
        let time = |name: &str| -> Result<Option<f64>, TokenError> {
            match claims.get(name) {
                None => Ok(None),
                Some(value) => value.as_f64().map(Some).ok_or(TokenError::Claims),
            }
        };
        let iat = time("iat")?.ok_or(TokenError::Claims)?;
        let now = now as f64;
        if time("exp")?.is_some_and(|exp| now >= exp) {
            return Err(TokenError::Expired);
        }
        if let Some(ttl) = self.ttl
            && now >= iat + ttl.as_secs_f64()
        {
            return Err(TokenError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| now < nbf) {
            return Err(TokenError::NotYetValid);
        }
        Ok(sub)
    }

    /// The user the `Authorization` header of a write authenticates, verified at `now`.
    pub fn authenticate(&self, headers: &HeaderMap, now: i64) -> Result<Uuid, AuthFailure> {
        let token = bearer_token(headers)?;
        self.verify(token, now).map_err(AuthFailure::Invalid)
    }
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1; the scheme is
/// case-insensitive). Another scheme counts as no token; two headers, or a bearer header that
/// holds no well-formed token, as an invalid one.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthFailure::Missing);
    };
    let invalid = AuthFailure::Invalid(TokenError::Malformed);
    let text = value.to_str().map_err(|_| invalid)?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return if values.next().is_some() {
            Err(invalid)
        } else {
            Err(AuthFailure::Missing)
        };
    }
    if values.next().is_some() {
        return Err(invalid);
    }
    let token = rest.trim_matches(' ');
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let well_formed = !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        });
    if well_formed { Ok(token) } else { Err(invalid) }
}

/// Signs `header` and `claims` as a compact JWS with `key`, exactly as given: the header is not
/// checked, so tests can build the tokens a verifier must refuse.
pub fn encode(header: &Value, claims: &Value, key: &Key) -> String {
    encode_raw(&header.to_string(), &claims.to_string(), key)
}

/// [`encode`] of a header and claims given as JSON text, byte for byte.
pub fn encode_raw(header: &str, claims: &str, key: &Key) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = key.mac();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

fn decode_json_object(part: &str) -> Result<serde_json::Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed),
    }
}

/// Seconds since the epoch, as tokens count time.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const USER: Uuid = uuid::uuid!("0190b6a0-0000-7000-8000-000000000001");
    const NOW: i64 = 1_750_000_000;

    fn key(kid: &str, fill: u8) -> Key {
        Key::new(kid, &[fill; 32]).expect("a valid key")
    }

    fn tokens(keys: &[Key], ttl: Option<u64>) -> Tokens {
        Tokens::new(Keys(keys.to_vec()), ttl.map(Duration::from_secs)).expect("keys")
    }

    #[test]
    fn a_token_matches_an_independently_computed_one() {
        // Computed with Python's hmac, hashlib and base64 (no JWT library):
        //   key = bytes([7]) * 32; signing input = b64url(header) + "." + b64url(claims)
        let k = key("k1", 7);
        let token = encode_raw(
            r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#,
            r#"{"sub":"0190b6a0-0000-7000-8000-000000000001","iat":1750000000}"#,
            &k,
        );
        assert_eq!(
            token,
            concat!(
                "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.",
                "eyJzdWIiOiIwMTkwYjZhMC0wMDAwLTcwMDAtODAwMC0wMDAwMDAwMDAwMDEiLCJpYXQiOjE3NTAwMDAwMDB9.",
                "ioag5AFl1I8IsuRuEuFFBbZHpl0JaTjz92O0gwG7-Zs"
            )
        );
        assert_eq!(tokens(&[k], None).verify(&token, NOW), Ok(USER));
    }

    #[test]
    fn issued_tokens_verify_and_carry_sub_iat_exp_and_kid() {
        let t = tokens(&[key("new", 1), key("old", 2)], Some(60));
        let token = t.issue(USER, NOW);
        assert_eq!(t.verify(&token, NOW), Ok(USER));
        assert_eq!(t.verify(&token, NOW + 59), Ok(USER));
        assert_eq!(t.verify(&token, NOW + 60), Err(TokenError::Expired));
        let parts: Vec<&str> = token.split('.').collect();
        let header = decode_json_object(parts[0]).expect("header");
        let claims = decode_json_object(parts[1]).expect("claims");
        assert_eq!(
            Value::Object(header),
            json!({"alg": "HS256", "typ": "JWT", "kid": "new"})
        );
        assert_eq!(
            Value::Object(claims),
            json!({"sub": USER.to_string(), "iat": NOW, "exp": NOW + 60})
        );

        let forever = tokens(&[key("k", 1)], None).issue(USER, NOW);
        let claims = decode_json_object(forever.split('.').nth(1).expect("claims")).expect("json");
        assert!(!claims.contains_key("exp"), "no lifetime, no exp");
    }

    #[test]
    fn the_first_key_signs_and_every_key_verifies() {
        let old = key("old", 1);
        let new = key("new", 2);
        let before = tokens(std::slice::from_ref(&old), None);
        let during = tokens(&[new.clone(), old.clone()], None);
        let after = tokens(std::slice::from_ref(&new), None);
        let old_token = before.issue(USER, NOW);
        let new_token = during.issue(USER, NOW);
        assert_eq!(during.verify(&old_token, NOW), Ok(USER));
        assert_eq!(during.verify(&new_token, NOW), Ok(USER));
        assert_eq!(after.verify(&new_token, NOW), Ok(USER));
        assert_eq!(after.verify(&old_token, NOW), Err(TokenError::UnknownKey));
        assert_eq!(before.verify(&new_token, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let k = key("k", 1);
        let t = tokens(std::slice::from_ref(&k), None);
        let claims = json!({"sub": USER.to_string(), "iat": NOW});
        let header = json!({"alg": "HS256", "kid": "k"});
        assert_eq!(t.verify(&encode(&header, &claims, &k), NOW), Ok(USER));

        // Another secret under the same name.
        let impostor = key("k", 9);
        assert_eq!(
            t.verify(&encode(&header, &claims, &impostor), NOW),
            Err(TokenError::Signature)
        );
        // Claims swapped under a valid signature.
        let good = encode(&header, &claims, &k);
        let other = json!({"sub": Uuid::nil().to_string(), "iat": NOW});
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(other.to_string());
        assert_eq!(t.verify(&parts.join("."), NOW), Err(TokenError::Signature));
        // alg "none" with no signature, and with ours; and other algorithms.
        for alg in [
            json!("none"),
            json!("None"),
            json!("HS512"),
            json!("RS256"),
            json!(null),
        ] {
            let header = json!({"alg": alg, "kid": "k"});
            let signed = encode(&header, &claims, &k);
            let unsigned = format!("{}.", signed.rsplit_once('.').expect("dot").0);
            assert_eq!(t.verify(&signed, NOW), Err(TokenError::Algorithm), "{alg}");
            assert_eq!(
                t.verify(&unsigned, NOW),
                Err(TokenError::Algorithm),
                "{alg}"
            );
        }
        let no_alg = encode(&json!({"kid": "k"}), &claims, &k);
        assert_eq!(t.verify(&no_alg, NOW), Err(TokenError::Algorithm));
        // No kid, an unknown kid.
        for header in [
            json!({"alg": "HS256"}),
            json!({"alg": "HS256", "kid": "other"}),
        ] {
            assert_eq!(
                t.verify(&encode(&header, &claims, &k), NOW),
                Err(TokenError::UnknownKey)
            );
        }
        let crit = json!({"alg": "HS256", "kid": "k", "crit": ["exp"]});
        assert_eq!(
            t.verify(&encode(&crit, &claims, &k), NOW),
            Err(TokenError::Critical)
        );
        // Padding or a truncated signature.
        assert_eq!(
            t.verify(&format!("{good}="), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            t.verify(&good[..good.len() - 3], NOW),
            Err(TokenError::Signature)
        );
        for junk in ["", ".", "..", "a.b.c", "a.b", "a.b.c.d", &"x".repeat(3000)] {
            assert_eq!(
                t.verify(junk, NOW),
                Err(TokenError::Malformed),
                "{junk:.20}"
            );
        }
    }

    #[test]
    fn claims_must_name_a_user_and_times_are_honoured() {
        let k = key("k", 1);
        let t = tokens(std::slice::from_ref(&k), None);
        let header = json!({"alg": "HS256", "kid": "k"});
        let sign = |claims: Value| encode(&header, &claims, &k);
        for bad in [
            json!({"iat": NOW}),
            json!({"sub": "alice", "iat": NOW}),
            json!({"sub": USER.simple().to_string(), "iat": NOW}),
            json!({"sub": USER.to_string()}),
            json!({"sub": USER.to_string(), "iat": "yesterday"}),
            json!({"sub": USER.to_string(), "iat": NOW, "exp": "never"}),
        ] {
            assert_eq!(
                t.verify(&sign(bad.clone()), NOW),
                Err(TokenError::Claims),
                "{bad}"
            );
        }
        let at = |exp: i64| sign(json!({"sub": USER.to_string(), "iat": NOW - 100, "exp": exp}));
        assert_eq!(t.verify(&at(NOW + 1), NOW), Ok(USER));
        assert_eq!(t.verify(&at(NOW), NOW), Err(TokenError::Expired));
        assert_eq!(t.verify(&at(NOW - 1), NOW), Err(TokenError::Expired));
        let later = sign(json!({"sub": USER.to_string(), "iat": NOW, "nbf": NOW + 10}));
        assert_eq!(t.verify(&later, NOW), Err(TokenError::NotYetValid));
        assert_eq!(t.verify(&later, NOW + 10), Ok(USER));

        // A lifetime bounds tokens without exp too, by their iat.
        let old = sign(json!({"sub": USER.to_string(), "iat": NOW - 3600}));
        assert_eq!(t.verify(&old, NOW), Ok(USER));
        let short = tokens(std::slice::from_ref(&k), Some(600));
        assert_eq!(short.verify(&old, NOW), Err(TokenError::Expired));
    }

    #[test]
    fn the_bearer_header_is_read_strictly() {
        let with = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(
                    header::AUTHORIZATION,
                    HeaderValue::from_bytes(v).expect("value"),
                );
            }
            headers
        };
        let invalid = Err(AuthFailure::Invalid(TokenError::Malformed));
        assert_eq!(bearer_token(&HeaderMap::new()), Err(AuthFailure::Missing));
        assert_eq!(
            bearer_token(&with(&[b"Basic YTpi"])),
            Err(AuthFailure::Missing)
        );
        assert_eq!(bearer_token(&with(&[b"Bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(
            bearer_token(&with(&[b"bearer  a.b-c_d~e+f/g=="])),
            Ok("a.b-c_d~e+f/g==")
        );
        assert_eq!(bearer_token(&with(&[b"Bearer"])), invalid);
        assert_eq!(bearer_token(&with(&[b"Bearer "])), invalid);
        assert_eq!(bearer_token(&with(&[b"Bearer a b"])), invalid);
        assert_eq!(bearer_token(&with(&[b"Bearer ===="])), invalid);
        assert_eq!(bearer_token(&with(&[b"Bearer a\"b"])), invalid);
        assert_eq!(bearer_token(&with(&[b"Bearer \xff"])), invalid);
        assert_eq!(bearer_token(&with(&[b"Bearer a", b"Bearer a"])), invalid);
        assert_eq!(bearer_token(&with(&[b"Basic x", b"Bearer a"])), invalid);
    }

    #[test]
    fn auth_keys_parse_hex_and_base64_and_refuse_weak_or_ambiguous_settings() {
        let hex32 = "00".repeat(31) + "ff";
        let b64 = STANDARD.encode([5_u8; 40]);
        let keys = Keys::parse(&format!(" new:{hex32} , old:{b64}")).expect("parses");
        assert_eq!(keys.kids(), ["new", "old"]);
        assert_eq!(
            &*keys.0[0].secret,
            &[[0_u8; 31].as_slice(), &[0xff]].concat()
        );
        assert_eq!(&*keys.0[1].secret, &[5_u8; 40]);
        let url_safe = URL_SAFE_NO_PAD.encode([0xfb_u8; 33]);
        assert!(Keys::parse(&format!("k:{url_safe}")).is_ok());
        assert!(Keys::parse("").expect("empty").is_empty());
        assert!(Keys::parse("  ").expect("blank").is_empty());
        let round_trip = Keys::parse(&keys.to_setting()).expect("round trip");
        assert_eq!(round_trip.to_setting(), keys.to_setting());

        let secret = "0123456789abcdef".repeat(4);
        for (bad, why) in [
            (format!("k:{}", "ab".repeat(31)), "31 bytes"),
            (format!("k{secret}"), "no colon"),
            (format!(":{secret}"), "no kid"),
            (format!("k k:{secret}"), "blank in kid"),
            (format!("{}:{secret}", "k".repeat(65)), "kid too long"),
            (format!("k:{secret},k:{secret}"), "duplicate kid"),
            (format!("k:{secret},"), "trailing comma"),
            ("k:not base64!!".to_owned(), "not base64"),
        ] {
            let error = Keys::parse(&bad).expect_err(why);
            assert!(
                !error.contains(&secret),
                "{why}: the error quotes the secret: {error}"
            );
        }
    }

    #[test]
    fn keys_never_show_their_secrets_in_debug() {
        let keys = Keys::parse(&format!("k:{}", "ab".repeat(32))).expect("parses");
        let shown = format!("{keys:?} {:?}", tokens(&keys.0, None));
        assert!(shown.contains("\"k\""), "{shown}");
        assert!(
            !shown.contains("abab") && !shown.contains("171, 171"),
            "{shown}"
        );
    }

    #[test]
    fn generated_keys_are_random_and_long_enough() {
        let a = Keys::generate("e").expect("random");
        let b = Keys::generate("e").expect("random");
        assert_eq!(a.0[0].secret.len(), MIN_SECRET_BYTES);
        assert_ne!(a.0[0].secret, b.0[0].secret);
    }
}
