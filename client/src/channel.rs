//! The channel every request goes through: a lazily connected tonic
//! channel that adds `authorization: Bearer <token>` to each request when
//! the client has a token ([`crate::ClientOptions::token`]).

use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue};
use tonic::codegen::{Context, Poll, Service};

/// A channel for the generated stubs (`proto::*_client`) that sends the
/// token with every request, for tools that talk to one node directly.
#[derive(Clone, Debug)]
pub struct Channel {
    inner: tonic::transport::Channel,
    /// `Bearer <token>`, marked sensitive so it is never printed.
    authorization: Option<HeaderValue>,
    /// The address the channel connects to (`host:port`), for error
    /// messages; empty for a channel made from a tonic channel.
    addr: std::sync::Arc<str>,
}

impl Channel {
    /// Wraps a tonic channel; `token` (`rkv_<name>_<secret>`) is sent as
    /// `authorization: Bearer <token>` on every request.
    pub fn with_token(inner: tonic::transport::Channel, token: Option<&str>) -> Result<Channel, crate::Error> {
        let authorization = token
            .map(|t| bearer(t).map_err(|reason| crate::Error::BadEndpoint { endpoint: String::new(), reason }))
            .transpose()?;
        Ok(Channel { inner, authorization, addr: "".into() })
    }

    /// A lazily connected channel to one node (`host:port`) made the way
    /// [`crate::Client`] makes its own: TLS, timeouts and token from `opts`.
    /// For tools that call services the client does not wrap (`Backup`).
    pub fn connect_lazy(addr: &str, opts: &crate::ClientOptions) -> Result<Channel, crate::Error> {
        crate::connect_lazy(addr, opts)
    }

    pub(crate) fn new(inner: tonic::transport::Channel, authorization: Option<HeaderValue>, addr: &str) -> Channel {
        Channel { inner, authorization, addr: addr.into() }
    }

    /// The address this channel connects to, as given (empty if unknown).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// The header value for `token`, or why it cannot be one.
pub(crate) fn bearer(token: &str) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| "the token contains characters a header cannot carry".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

impl Service<http::Request<Body>> for Channel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <tonic::transport::Channel as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            req.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        self.inner.call(req)
    }
}
