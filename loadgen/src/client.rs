//! HTTP/1.1 for the hot path: [`Endpoint`] (a base URL resolved once) and [`Connection`], one
//! keep-alive connection owned by one task.
//!
//! Plain hyper client connections instead of a pooled client: a task sends one request at a time,
//! so a pool would only add locking and bookkeeping, and the generator shares the machine's
//! cores with the servers it measures.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a base URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not a URL: {1}")]
    Invalid(String, String),
    #[error("`{0}`: only http:// URLs are supported (no TLS on the measured path)")]
    NotHttp(String),
    #[error("cannot resolve the host of `{0}`: {1}")]
    Resolve(String, std::io::Error),
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no answer within the timeout")]
    Timeout,
}

/// A service's base URL, resolved once: the address to dial, the `Host` header, and the path
/// prefix every request path is appended to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    addresses: Vec<SocketAddr>,
    host: HeaderValue,
    prefix: String,
}

impl Endpoint {
    pub async fn resolve(url: &str) -> Result<Endpoint, EndpointError> {
        let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| {
            EndpointError::Invalid(url.to_owned(), e.to_string())
        })?;
        if uri.scheme_str() != Some("http") {
            return Err(EndpointError::NotHttp(url.to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| EndpointError::Invalid(url.to_owned(), "no host".to_owned()))?;
        let port = authority.port_u16().unwrap_or(80);
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((authority.host(), port))
            .await
            .map_err(|e| EndpointError::Resolve(url.to_owned(), e))?
            .collect();
        if addresses.is_empty() {
            return Err(EndpointError::Resolve(
                url.to_owned(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            ));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| EndpointError::Invalid(url.to_owned(), e.to_string()))?;
        Ok(Endpoint {
            url: url.trim_end_matches('/').to_owned(),
            addresses,
            host,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A request for `path` (which starts with `/` and may carry a query) on this endpoint.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        RequestBuilder {
            method,
            target: format!("{}{path}", self.prefix),
            headers: Vec::new(),
            body: None,
        }
    }
}

/// What goes into one request; turned into a hyper request by [`Connection::send`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: Method,
    target: String,
    headers: Vec<(HeaderName, String)>,
    body: Option<Bytes>,
}

impl RequestBuilder {
    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> RequestBuilder {
        self.headers.push((name, value.into()));
        self
    }

    pub fn json(mut self, body: Bytes) -> RequestBuilder {
        self.body = Some(body);
        self
    }

    fn build(self, host: &HeaderValue) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
        let mut request = Request::builder()
            .method(self.method)
            .uri(self.target)
            .header(header::HOST, host.clone());
        for (name, value) in self.headers {
            request = request.header(name, value);
        }
        match self.body {
            Some(body) => request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body)),
            None => request.body(Full::new(Bytes::new())),
        }
    }
}

/// An answer, read to its end (which is what lets the connection carry the next request).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// Kept for the callers that judge them (`loadgen chaos` checks a 503's `Retry-After`).
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One keep-alive HTTP/1.1 connection to an [`Endpoint`], dialled on first use and again after
/// any failure.
#[derive(Debug)]
pub struct Connection {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    pub fn new(endpoint: Endpoint) -> Connection {
        Connection {
            endpoint,
            sender: None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends the request and reads the whole answer, within `timeout` (dialling included).
    pub async fn send(
        &mut self,
        request: RequestBuilder,
        timeout: Duration,
    ) -> Result<Answer, TransportError> {
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                // The connection may still deliver the late answer, which the next request would
                // then read as its own: never reuse it.
                self.sender = None;
                Err(TransportError::Timeout)
            }
        }
    }

    async fn exchange(&mut self, request: RequestBuilder) -> Result<Answer, TransportError> {
        let request = request.build(&self.endpoint.host).map_err(|e| {
            TransportError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
        let sender = self.ready_sender().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers: parts.headers,
            body,
        })
    }

    async fn ready_sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, TransportError> {
        // The server may have closed an idle connection; find out before writing to it.
        if self.sender.as_ref().is_some_and(SendRequest::is_closed) {
            self.sender = None;
        }
        let sender = match self.sender.take() {
            Some(sender) => sender,
            None => self.dial().await?,
        };
        let sender = self.sender.insert(sender);
        sender.ready().await?;
        Ok(sender)
    }

    async fn dial(&self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let stream = TcpStream::connect(&self.endpoint.addresses[..])
            .await
            .map_err(TransportError::Connect)?;
        // Requests are small and answered one at a time: Nagle would only add latency.
        stream.set_nodelay(true).map_err(TransportError::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs on its own task and ends when the sender is dropped or the
        // peer closes; its error, if any, surfaces on the sender.
        tokio::spawn(connection);
        Ok(sender)
    }
}
