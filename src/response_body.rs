//! The body of a response that is either the inner service's or one of this
//! crate's short plain-text answers.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that is either the inner service's, passed
    /// through, or a short `text/plain` answer made by this crate (`413`
    /// from [`PrebufferLayer`](crate::prebuffer::PrebufferLayer), `500` from
    /// [`try_service_fn`](crate::blocking::try_service_fn)).
    ///
    /// As tower-http's `RequestBodyLimit` does, it keeps the inner body's
    /// error type, so an `Infallible` body stays infallible; data comes out
    /// as [`Bytes`] (without a copy when it already is `Bytes`). It forwards
    /// `size_hint` and `is_end_stream`.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Text { text: Option<Bytes>, len: u64 },
    }
}

impl<B> ResponseBody<B> {
    /// Passes `body` through.
    pub(crate) fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A `text/plain` response with `status` and `text` as its body.
    pub(crate) fn plain_text(status: StatusCode, text: &'static str) -> Response<Self> {
        let body = Self {
            kind: Kind::Text {
                text: (!text.is_empty()).then_some(Bytes::from_static(text.as_bytes())),
                len: text.len() as u64,
            },
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx).map(|frame| {
                frame.map(|frame| {
                    frame.map(|frame| {
                        frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                    })
                })
            }),
            KindProj::Text { text, len } => {
                *len = 0;
                Poll::Ready(text.take().map(|text| Ok(Frame::data(text))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Text { text, .. } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Text { len, .. } => SizeHint::with_exact(*len),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Text { .. } => "plain text",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}
