//! Just enough HTTP/1.1 for the bench's producers and receiver.
//!
//! Both share the two cores with the server they measure, so each costs what it must and no
//! more. A connection is a stream and a buffer, read and written by the one task that uses it:
//! no task of its own to hand requests to, no router, no header map. Message heads are parsed by
//! `httparse` (hyper's parser). What they speak is ordinary HTTP/1.1 with keep-alive; bodies are
//! sized by `Content-Length`, chunked, or (in answers only) delimited by the server closing.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest message head either side reads (a delivery of Herald's carries about a dozen
/// headers).
const MAX_HEAD: usize = 64 * 1024;
/// The largest body either side reads: a request at Herald's default limit (1 MiB), with room.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The most headers one message may carry.
const MAX_HEADERS: usize = 64;
/// How much room a read asks for at least.
const READ_SIZE: usize = 8 * 1024;

/// One HTTP/1.1 connection, either side of it.
pub struct Connection<S> {
    stream: S,
    /// Bytes read and not yet taken as part of a message.
    buf: BytesMut,
}

/// A request, as the receiver needs it.
#[derive(Debug)]
pub struct Request {
    pub path: String,
    pub body: Bytes,
    /// The client asked for the connection to be closed after the answer.
    pub close: bool,
}

/// An answer, as the producers need it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
    /// The server will not take another request on this connection.
    pub close: bool,
}

/// Where a message's body ends, from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    Exactly(usize),
    Chunked,
    /// Until the peer closes (answers without a length).
    UntilClose,
}

/// What a message head says of the body after it and of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    length: Length,
    close: bool,
}

/// A parsed head (a request's path or an answer's status), its framing, and its length; `None`
/// while the head is incomplete.
type Parsed<T> = io::Result<Option<(T, Framing, usize)>>;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn closed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(READ_SIZE),
        }
    }

    /// The next request, or `None` when the client closed the connection between requests.
    pub async fn read_request(&mut self) -> io::Result<Option<Request>> {
        let Some((path, framing)) = self.read_head(parse_request).await? else {
            return Ok(None);
        };
        let body = self.read_body(framing.length).await?;
        Ok(Some(Request {
            path,
            body,
            close: framing.close,
        }))
    }

    /// The answer to the request just sent. Interim answers (`100 Continue`) are skipped.
    pub async fn read_response(&mut self) -> io::Result<Response> {
        loop {
            let Some((status, framing)) = self.read_head(parse_response).await? else {
                return Err(closed("the server closed the connection without answering"));
            };
            let body = self.read_body(framing.length).await?;
            if (100..200).contains(&status) {
                continue;
            }
            return Ok(Response {
                status,
                body,
                close: framing.close,
            });
        }
    }

    /// Writes `head` and `body` (in one system call where the stream allows) and flushes.
    pub async fn send(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let mut message = Buf::chain(head, body);
        self.stream.write_all_buf(&mut message).await?;
        self.stream.flush().await
    }

    async fn read_head<T>(
        &mut self,
        parse: fn(&[u8]) -> Parsed<T>,
    ) -> io::Result<Option<(T, Framing)>> {
        loop {
            if !self.buf.is_empty() {
                if let Some((head, framing, used)) = parse(&self.buf)? {
                    self.buf.advance(used);
                    return Ok(Some((head, framing)));
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(invalid("a message head longer than 64 KiB"));
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(closed("the peer closed the connection in a message head"))
                };
            }
        }
    }

    /// Reads once more from the stream; 0 means it was closed.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_SIZE);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads until at least `n` bytes are buffered.
    async fn fill_to(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(closed("the peer closed the connection in a message body"));
            }
        }
        Ok(())
    }

    async fn read_body(&mut self, length: Length) -> io::Result<Bytes> {
        match length {
            Length::Exactly(n) => {
                if n > MAX_BODY {
                    return Err(invalid(format!("a body of {n} bytes (at most 16 MiB)")));
                }
                self.fill_to(n).await?;
                Ok(self.buf.split_to(n).freeze())
            }
            Length::Chunked => self.read_chunked().await,
            Length::UntilClose => {
                while self.fill().await? > 0 {
                    if self.buf.len() > MAX_BODY {
                        return Err(invalid("a body over 16 MiB"));
                    }
                }
                Ok(self.buf.split().freeze())
            }
        }
    }

    async fn read_chunked(&mut self) -> io::Result<Bytes> {
        let mut body = BytesMut::new();
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() <= MAX_HEAD => {
                        if self.fill().await? == 0 {
                            return Err(closed("the peer closed the connection in a chunk"));
                        }
                    }
                    _ => return Err(invalid("a chunk whose size line is not valid")),
                }
            };
            let size = usize::try_from(size)
                .ok()
                .filter(|size| body.len() + size <= MAX_BODY)
                .ok_or_else(|| invalid("a chunked body over 16 MiB"))?;
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(body.freeze());
            }
            self.fill_to(size + 2).await?;
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(invalid("a chunk not followed by CRLF"));
            }
            self.buf.advance(size + 2);
        }
    }

    /// Skips the trailer lines after the last chunk, up to and including the empty line.
    async fn skip_trailers(&mut self) -> io::Result<()> {
        loop {
            match memchr::memmem::find(&self.buf, b"\r\n") {
                Some(0) => {
                    self.buf.advance(2);
                    return Ok(());
                }
                Some(end) => self.buf.advance(end + 2),
                None if self.buf.len() > MAX_HEAD => {
                    return Err(invalid("trailers longer than 64 KiB"));
                }
                None => {
                    if self.fill().await? == 0 {
                        return Err(closed("the peer closed the connection in the trailers"));
                    }
                }
            }
        }
    }
}

/// A complete request head at the start of `bytes`: its path, framing and length.
fn parse_request(bytes: &[u8]) -> Parsed<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("not an HTTP/1.1 request ({e})"))),
    };
    let framing = framing(request.version, request.headers, Length::Exactly(0))?;
    let path = request.path.unwrap_or("/").to_owned();
    Ok(Some((path, framing, used)))
}

/// A complete answer head at the start of `bytes`: its status, framing and length.
fn parse_response(bytes: &[u8]) -> Parsed<u16> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(bytes) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("not an HTTP/1.1 answer ({e})"))),
    };
    let status = response.code.unwrap_or(0);
    let mut framing = framing(response.version, response.headers, Length::UntilClose)?;
    if (100..200).contains(&status) || status == 204 || status == 304 {
        framing.length = Length::Exactly(0);
    }
    if framing.length == Length::UntilClose {
        framing.close = true;
    }
    Ok(Some((status, framing, used)))
}

/// Reads `Content-Length`, `Transfer-Encoding` and `Connection` from a head; `otherwise` is the
/// body's length when it gives none.
fn framing(
    version: Option<u8>,
    headers: &[httparse::Header<'_>],
    otherwise: Length,
) -> io::Result<Framing> {
    let mut close = version == Some(0);
    let mut length = None;
    let mut chunked = false;
    for header in headers {
        let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| invalid(format!("Content-Length '{value}' is not a number")))?;
            if length.is_some_and(|seen| seen != n) {
                return Err(invalid("two different Content-Length headers"));
            }
            length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                close = true;
            } else if value.contains("keep-alive") {
                close = false;
            }
        }
    }
    let length = match (chunked, length) {
        (true, _) => Length::Chunked,
        (false, Some(n)) => Length::Exactly(n),
        (false, None) => otherwise,
    };
    Ok(Framing { length, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection reading `input` and then the peer's close, whatever it is sent.
    fn reading(input: &[u8]) -> Connection<tokio::io::DuplexStream> {
        let (mine, mut theirs) = tokio::io::duplex(1024 * 1024);
        let input = input.to_vec();
        tokio::spawn(async move {
            theirs.write_all(&input).await.unwrap();
            theirs.shutdown().await.unwrap();
            let _ = theirs.read_to_end(&mut Vec::new()).await;
        });
        Connection::new(mine)
    }

    #[tokio::test]
    async fn requests_follow_one_another_on_a_connection() {
        let mut conn = reading(
            b"POST /h/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloPOST /h/4 HTTP/1.1\r\ncontent-length: 2\r\nConnection: close\r\n\r\nok",
        );
        let first = conn.read_request().await.unwrap().unwrap();
        assert_eq!(
            (first.path.as_str(), &first.body[..], first.close),
            ("/h/3", &b"hello"[..], false)
        );
        let second = conn.read_request().await.unwrap().unwrap();
        assert_eq!(
            (second.path.as_str(), &second.body[..], second.close),
            ("/h/4", &b"ok"[..], true)
        );
    }

    #[tokio::test]
    async fn a_connection_closed_between_requests_is_the_end_not_an_error() {
        let mut conn = reading(b"GET / HTTP/1.1\r\n\r\n");
        assert!(conn.read_request().await.unwrap().unwrap().body.is_empty());
        assert!(conn.read_request().await.unwrap().is_none());
        let mut cut = reading(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nhalf");
        let err = cut.read_request().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn answers_sized_chunked_or_until_close() {
        let mut sized = reading(b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}");
        let answer = sized.read_response().await.unwrap();
        assert_eq!(
            (answer.status, &answer.body[..], answer.close),
            (202, &b"{}"[..], false)
        );

        let mut chunked = reading(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        let answer = chunked.read_response().await.unwrap();
        assert_eq!(
            (answer.status, &answer.body[..]),
            (400, &b"hello world"[..])
        );

        let mut until_close = reading(b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown");
        let answer = until_close.read_response().await.unwrap();
        assert_eq!(
            (answer.status, &answer.body[..], answer.close),
            (503, &b"down"[..], true)
        );

        let mut no_content = reading(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(no_content.read_response().await.unwrap().body.is_empty());
    }

    #[tokio::test]
    async fn a_head_split_across_reads_is_put_together() {
        let (mine, mut theirs) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for piece in [
                &b"HTTP/1.1 2"[..],
                b"02 Accepted\r\nContent-Le",
                b"ngth: 3\r\n\r",
                b"\nabc",
            ] {
                theirs.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            let _ = theirs.read_to_end(&mut Vec::new()).await;
        });
        let answer = Connection::new(mine).read_response().await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (202, &b"abc"[..]));
    }

    #[tokio::test]
    async fn what_is_not_http_or_too_large_is_refused() {
        let mut garbage = reading(b"\x16\x03\x01 hello\r\n\r\n");
        assert_eq!(
            garbage.read_request().await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut huge = reading(b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n");
        assert!(
            huge.read_request()
                .await
                .unwrap_err()
                .to_string()
                .contains("16 MiB")
        );
        let mut twice =
            reading(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab");
        assert!(twice.read_request().await.is_err());
    }

    #[tokio::test]
    async fn what_is_sent_arrives_whole() {
        let (mine, mut theirs) = tokio::io::duplex(16);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut conn = Connection::new(mine);
        conn.send(
            b"POST / HTTP/1.1\r\ncontent-length: 40\r\n\r\n",
            &[b'x'; 40],
        )
        .await
        .unwrap();
        drop(conn);
        let all = reader.await.unwrap();
        assert!(all.starts_with(b"POST / HTTP/1.1\r\n"));
        assert!(all.ends_with(&[b'x'; 40]));
    }
}
