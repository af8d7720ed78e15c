//! What a client may send before it is refused: the size of a request's head, and the time it
//! may take to send its body. Every service has these, through [`crate::http::with_common_layers`]
//! and [`crate::server::serve`].
//!
//! The head is bounded twice. hyper reads it into a buffer of at most [`HEAD_BUFFER_BYTES`]
//! (its default is about 400 KiB a connection) and answers anything larger with a bare `431`
//! and no body; below that, [`HeadLimitsLayer`] answers what is over our own, smaller limits
//! with a problem+json that says which limit: a request target over [`MAX_TARGET_BYTES`] is a
//! `414`, headers over [`MAX_HEADER_BYTES`] or [`MAX_HEADER_COUNT`] a `431`. hyper's refusal
//! stays as the last line, for heads no client of ours sends.
//!
//! A body must arrive whole within the server's body read timeout of the request's head
//! ([`DeadlineBody`]): a client that sends its headers and then trickles or stalls its body
//! would otherwise hold a connection and a task for as long as it likes. Reading past the
//! deadline fails with [`BodyReadTimeout`], which the service that reads the body turns into a
//! `408` of its own ([`find_body_read_timeout`]).

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use hyper::body::{Frame, SizeHint};
use tower::{Layer, Service};

use crate::problem::Problem;

/// The longest request target (path and query string, or the whole URI in absolute form):
/// 8 KiB, as most proxies and servers allow. Our longest paths are under 100 bytes and our
/// query strings a cursor and two numbers.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// The most header bytes a request may carry, counting each header as it is sent (name, value,
/// and the four bytes of `: ` and CRLF): 16 KiB, room for any bearer token and proxy headers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The most header lines a request may carry. hyper refuses more than 100 with a bare `431`
/// (raising its bound costs every request a heap allocation), so ours is lower, to answer
/// most over-long lists with a problem+json.
pub const MAX_HEADER_COUNT: usize = 64;

/// hyper's read buffer per connection, and the largest head it parses (request line and
/// headers). Above our own limits, so that they answer first; past it hyper answers a bare `431`
/// and closes the connection.
pub const HEAD_BUFFER_BYTES: usize = 64 * 1024;

/// How long a client may take to send a request's body, from the end of its head. 64 KiB (the
/// largest body any route takes) in 10 s is 6.4 KB/s, slower than any network a client uses.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses requests whose head is over [`MAX_TARGET_BYTES`] (414), [`MAX_HEADER_BYTES`] or
/// [`MAX_HEADER_COUNT`] (431), before the handler or any other route layer runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadLimitsLayer;

impl<S> Layer<S> for HeadLimitsLayer {
    type Service = HeadLimits<S>;

    fn layer(&self, inner: S) -> HeadLimits<S> {
        HeadLimits { inner }
    }
}

#[derive(Clone, Debug)]
pub struct HeadLimits<S> {
    inner: S,
}

impl<S> Service<Request> for HeadLimits<S>
where
    S: Service<Request, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Checked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match check_head(request.uri(), request.headers()) {
            Ok(()) => Checked::Passed {
                inner: self.inner.call(request),
            },
            Err(over) => Checked::Refused { over },
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, or the refusal of a head over a limit.
    #[project = CheckedProjection]
    pub enum Checked<F> {
        Passed { #[pin] inner: F },
        Refused { over: OverLimit },
    }
}

impl<F, E> Future for Checked<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            CheckedProjection::Passed { inner } => inner.poll(cx),
            CheckedProjection::Refused { over } => Poll::Ready(Ok(over.problem().into_response())),
        }
    }
}

/// The request target's length as it was sent: the path and query, and the scheme and
/// authority of an absolute-form target.
fn target_len(uri: &Uri) -> usize {
    let scheme = uri
        .scheme_str()
        .map_or(0, |scheme| scheme.len() + "://".len());
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    let path_and_query = uri.path_and_query().map_or(0, |p| p.as_str().len());
    scheme + authority + path_and_query
}

/// The headers' size as they were sent, each line `name: value\r\n`.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum()
}

/// A head over one of the limits, and by how much: what its refusal says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverLimit {
    Target(usize),
    HeaderLines(usize),
    HeaderBytes(usize),
}

impl OverLimit {
    #[cold]
    fn problem(self) -> Problem {
        let too_large = |detail| {
            Problem::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header-fields-too-large",
                "Request header fields too large",
                detail,
            )
        };
        match self {
            OverLimit::Target(len) => Problem::new(
                StatusCode::URI_TOO_LONG,
                "uri-too-long",
                "URI too long",
                format!(
                    "the request target (path and query string) is {len} bytes; at most \
                     {MAX_TARGET_BYTES} are accepted"
                ),
            ),
            OverLimit::HeaderLines(count) => too_large(format!(
                "the request has {count} header lines; at most {MAX_HEADER_COUNT} are accepted"
            )),
            OverLimit::HeaderBytes(size) => too_large(format!(
                "the request's headers are {size} bytes; at most {MAX_HEADER_BYTES} are accepted"
            )),
        }
    }
}

fn check_head(uri: &Uri, headers: &HeaderMap) -> Result<(), OverLimit> {
    let target = target_len(uri);
    if target > MAX_TARGET_BYTES {
        return Err(OverLimit::Target(target));
    }
    if headers.len() > MAX_HEADER_COUNT {
        return Err(OverLimit::HeaderLines(headers.len()));
    }
    let size = header_bytes(headers);
    if size > MAX_HEADER_BYTES {
        return Err(OverLimit::HeaderBytes(size));
    }
    Ok(())
}

/// Reading a request body took longer than the server's body read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyReadTimeout {
    pub timeout: Duration,
}

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} ms",
            self.timeout.as_millis()
        )
    }
}

impl Error for BodyReadTimeout {}

/// The [`BodyReadTimeout`] behind `error`, if a body read failed for it. Extractors wrap a
/// body's error (axum twice, a body limit once more), so this follows `error`'s sources.
pub fn find_body_read_timeout(error: &(dyn Error + 'static)) -> Option<BodyReadTimeout> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(timeout) = error.downcast_ref::<BodyReadTimeout>() {
            return Some(*timeout);
        }
        next = error.source();
    }
    None
}

pin_project_lite::pin_project! {
    /// A request body that fails with [`BodyReadTimeout`] once its deadline has passed and it
    /// has nothing more to give. A body that is already in the buffer is read without ever
    /// arming the timer; one that trickles in is cut off at the first wait past the deadline.
    pub struct DeadlineBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: tokio::time::Sleep,
        timeout: Duration,
    }
}

impl<B> DeadlineBody<B> {
    /// `inner`, to be read whole within `timeout` from now. Needs a Tokio runtime with timers.
    pub fn new(inner: B, timeout: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            inner,
            deadline: tokio::time::sleep(timeout),
            timeout,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        ready!(this.deadline.poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyReadTimeout {
            timeout: *this.timeout,
        }))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(lines: &[(&'static str, String)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_str(value).expect("a header value"));
        }
        headers
    }

    #[test]
    fn the_target_is_measured_as_sent() {
        let origin: Uri = "/v1/posts?limit=10".parse().expect("a target");
        assert_eq!(target_len(&origin), "/v1/posts?limit=10".len());
        let absolute: Uri = "http://example.com:8080/v1/posts?limit=10"
            .parse()
            .expect("a target");
        assert_eq!(
            target_len(&absolute),
            "http://example.com:8080/v1/posts?limit=10".len()
        );
    }

    #[test]
    fn heads_at_the_limits_pass_and_one_byte_or_line_more_is_refused() {
        let longest: Uri = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1))
            .parse()
            .expect("a target");
        assert!(check_head(&longest, &HeaderMap::new()).is_ok());
        let over: Uri = format!("/{}", "a".repeat(MAX_TARGET_BYTES))
            .parse()
            .expect("a target");
        let refused = check_head(&over, &HeaderMap::new())
            .expect_err("one byte too long")
            .problem();
        assert_eq!(refused.status, StatusCode::URI_TOO_LONG);
        assert_eq!(refused.kind, "uri-too-long");

        let root: Uri = "/".parse().expect("a target");
        // One header whose line is exactly the limit: "x: " + value + CRLF.
        let at_limit = headers(&[("x", "v".repeat(MAX_HEADER_BYTES - 5))]);
        assert_eq!(header_bytes(&at_limit), MAX_HEADER_BYTES);
        assert!(check_head(&root, &at_limit).is_ok());
        let over = headers(&[("x", "v".repeat(MAX_HEADER_BYTES - 4))]);
        let refused = check_head(&root, &over)
            .expect_err("one byte too many")
            .problem();
        assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(refused.kind, "header-fields-too-large");

        let lines: Vec<_> = (0..MAX_HEADER_COUNT)
            .map(|_| ("x", "v".to_owned()))
            .collect();
        assert!(check_head(&root, &headers(&lines)).is_ok());
        let lines: Vec<_> = (0..=MAX_HEADER_COUNT)
            .map(|_| ("x", "v".to_owned()))
            .collect();
        let refused = check_head(&root, &headers(&lines))
            .expect_err("one line too many")
            .problem();
        assert_eq!(refused.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert!(
            refused.detail.contains("header lines"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn the_limits_answer_before_hyper_would() {
        const {
            assert!(MAX_TARGET_BYTES + MAX_HEADER_BYTES < HEAD_BUFFER_BYTES);
            assert!(MAX_HEADER_COUNT < 100);
        }
    }

    #[test]
    fn a_timeout_is_found_behind_the_errors_that_wrap_it() {
        let timeout = BodyReadTimeout {
            timeout: Duration::from_millis(1500),
        };
        let wrapped = axum::Error::new(axum::Error::new(timeout));
        assert_eq!(find_body_read_timeout(&wrapped), Some(timeout));
        let other = axum::Error::new(std::io::Error::other("reset"));
        assert_eq!(find_body_read_timeout(&other), None);
        assert!(timeout.to_string().contains("1500 ms"), "{timeout}");
    }
}
