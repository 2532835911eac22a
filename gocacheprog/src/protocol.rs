//! The GOCACHEPROG wire protocol exactly as the go command (1.24+) speaks it, with no I/O:
//! bytes in, [`Event`]s out; [`Response`]s in, bytes out.
//!
//! Framing, from `cmd/go/internal/cache/prog.go`: each request is a JSON object followed by a
//! newline and then *another* newline (json.Encoder adds one, prog.go a second). A `put` with
//! `BodySize > 0` is followed by one more line: a JSON string of standard padded base64. IDs
//! are 32-byte values, base64 in JSON. Responses are one JSON object per line, in any order.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proto::{ActionId, OutputId};
use serde::{Deserialize, Serialize};

/// Longest request line accepted. Real ones are about 200 bytes; the cap only keeps a broken
/// peer from growing the buffer without bound.
pub const MAX_LINE: usize = 64 << 10;
/// The commands this helper implements, announced unasked in the handshake.
pub const KNOWN_COMMANDS: [&str; 3] = ["get", "put", "close"];

/// A request from the go command, checked and typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get {
        id: i64,
        action_id: ActionId,
    },
    /// Followed by [`Event::Body`] chunks totalling `body_size` bytes, then [`Event::BodyEnd`].
    Put {
        id: i64,
        action_id: ActionId,
        output_id: OutputId,
        body_size: u64,
    },
    Close {
        id: i64,
    },
    /// A command we did not announce; answered with an error rather than ending the session.
    Unknown {
        id: i64,
        command: String,
    },
}

impl Request {
    pub fn id(&self) -> i64 {
        match self {
            Self::Get { id, .. } | Self::Put { id, .. } | Self::Close { id } | Self::Unknown { id, .. } => {
                *id
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Request(Request),
    /// Decoded bytes of the body of the `put` announced last.
    Body(Vec<u8>),
    /// The body of the `put` announced last is complete (and had exactly `body_size` bytes).
    BodyEnd,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed input from the go command at line {line}: {message}")]
pub struct ProtocolError {
    pub line: u64,
    pub message: String,
}

/// The wire form of a request. Unknown fields are ignored, as Go ignores ours.
#[derive(Deserialize)]
struct WireRequest {
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "Command")]
    command: String,
    #[serde(rename = "ActionID", default)]
    action_id: Option<String>,
    #[serde(rename = "OutputID", default)]
    output_id: Option<String>,
    /// The pre-1.24 name of OutputID, still sent by 1.24 under GOEXPERIMENT=cacheprog.
    #[serde(rename = "ObjectID", default)]
    object_id: Option<String>,
    #[serde(rename = "BodySize", default)]
    body_size: i64,
}

enum State {
    Requests,
    /// After a put request: whitespace, then the opening quote of the body string.
    BodyOpen {
        size: u64,
    },
    /// Inside the body string; `padded` once a quad with `=` was seen (nothing may follow).
    Body {
        size: u64,
        decoded: u64,
        padded: bool,
    },
}

/// Incremental decoder: [`Decoder::push`] bytes as they arrive, then take events with
/// [`Decoder::next_event`] until it returns `None`. Memory stays bounded: a body is handed out
/// in pieces as its base64 arrives, never collected whole.
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
    state: State,
    line: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self { buf: Vec::new(), pos: 0, state: State::Requests, line: 1 }
    }

    pub fn push(&mut self, input: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(input);
    }

    /// Whether the input so far ends between requests (not inside a line or a body).
    pub fn is_between_requests(&self) -> bool {
        matches!(self.state, State::Requests) && self.buf[self.pos..].iter().all(u8::is_ascii_whitespace)
    }

    pub fn next_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        loop {
            let event = match self.state {
                State::Requests => self.next_request()?,
                State::BodyOpen { size } => {
                    if !self.open_body(size)? {
                        return Ok(None);
                    }
                    continue;
                }
                State::Body { size, decoded, padded } => self.next_body_piece(size, decoded, padded)?,
            };
            match event {
                Step::Event(event) => return Ok(Some(event)),
                Step::NeedInput => return Ok(None),
                Step::Again => continue,
            }
        }
    }

    fn error(&self, message: impl Into<String>) -> ProtocolError {
        ProtocolError { line: self.line, message: message.into() }
    }

    fn next_request(&mut self) -> Result<Step, ProtocolError> {
        let rest = &self.buf[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_LINE {
                return Err(self.error(format!("a request line longer than {MAX_LINE} bytes")));
            }
            return Ok(Step::NeedInput);
        };
        let line = &rest[..end];
        self.pos += end + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            self.line += 1;
            return Ok(Step::Again);
        }
        let request = parse_request(line).map_err(|message| self.error(message))?;
        self.line += 1;
        if let Request::Put { body_size, .. } = request
            && body_size > 0
        {
            self.state = State::BodyOpen { size: body_size };
        }
        Ok(Step::Event(Event::Request(request)))
    }

    /// Skips whitespace up to the body's opening quote; false when more input is needed.
    fn open_body(&mut self, size: u64) -> Result<bool, ProtocolError> {
        while let Some(&byte) = self.buf.get(self.pos) {
            self.pos += 1;
            match byte {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                b'"' => {
                    self.state = State::Body { size, decoded: 0, padded: false };
                    return Ok(true);
                }
                other => {
                    return Err(self.error(format!(
                        "expected the put body (a base64 JSON string of {size} bytes), found {:?}",
                        char::from(other)
                    )));
                }
            }
        }
        Ok(false)
    }

    /// Decodes every whole base64 quad available; at the closing quote, checks the size.
    fn next_body_piece(&mut self, size: u64, decoded: u64, padded: bool) -> Result<Step, ProtocolError> {
        let rest = &self.buf[self.pos..];
        let quote = rest.iter().position(|&b| b == b'"');
        let available = quote.unwrap_or(rest.len());
        let whole = available / 4 * 4;
        if quote.is_some() && whole != available {
            return Err(self.error("the put body's base64 length is not a multiple of 4"));
        }
        let text = &rest[..whole];
        if padded && !text.is_empty() {
            return Err(self.error("base64 continues after its padding in a put body"));
        }
        let mut piece = vec![0u8; whole / 4 * 3];
        let len = STANDARD
            .decode_slice(text, &mut piece)
            .map_err(|err| self.error(format!("the put body is not valid base64: {err}")))?;
        piece.truncate(len);
        let decoded = decoded + len as u64;
        if decoded > size {
            return Err(self.error(format!("the put body holds more than the {size} bytes announced")));
        }
        let padded = padded || text.last() == Some(&b'=');
        self.pos += whole;
        self.state = State::Body { size, decoded, padded };
        if quote.is_some() {
            if !piece.is_empty() {
                // Hand out the last piece first; the closing quote is seen on the next call.
                return Ok(Step::Event(Event::Body(piece)));
            }
            if decoded != size {
                return Err(
                    self.error(format!("the put body holds {decoded} bytes, not the {size} announced"))
                );
            }
            self.pos += 1;
            self.state = State::Requests;
            return Ok(Step::Event(Event::BodyEnd));
        }
        Ok(if piece.is_empty() { Step::NeedInput } else { Step::Event(Event::Body(piece)) })
    }
}

enum Step {
    Event(Event),
    NeedInput,
    Again,
}

fn parse_request(line: &[u8]) -> Result<Request, String> {
    let wire: WireRequest =
        serde_json::from_slice(line).map_err(|err| format!("not a request object ({err})"))?;
    let id = wire.id;
    match wire.command.as_str() {
        "get" => Ok(Request::Get { id, action_id: action_id(id, wire.action_id.as_deref())? }),
        "put" => {
            let body_size = u64::try_from(wire.body_size)
                .map_err(|_| format!("put #{id} has a negative BodySize {}", wire.body_size))?;
            let output = wire.output_id.as_deref().or(wire.object_id.as_deref());
            Ok(Request::Put {
                id,
                action_id: action_id(id, wire.action_id.as_deref())?,
                output_id: OutputId(decode_id(id, "OutputID", output)?),
                body_size,
            })
        }
        "close" => Ok(Request::Close { id }),
        _ => Ok(Request::Unknown { id, command: wire.command }),
    }
}

fn action_id(id: i64, text: Option<&str>) -> Result<ActionId, String> {
    decode_id(id, "ActionID", text).map(ActionId)
}

fn decode_id(id: i64, field: &str, text: Option<&str>) -> Result<[u8; 32], String> {
    let text = text.ok_or_else(|| format!("request #{id} lacks its {field}"))?;
    let bytes =
        STANDARD.decode(text).map_err(|err| format!("{field} of request #{id} is not base64: {err}"))?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| format!("{field} of request #{id} has {} bytes, not 32", bytes.len()))
}

/// An entry found in the cache, as a `get` answer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub output_id: OutputId,
    pub size: u64,
    /// When the entry was first put; Go's `go clean -testcache` compares it with its cutoff.
    pub time_unix_nanos: i64,
    /// Absolute path of the body; the go command opens it itself.
    pub disk_path: String,
}

/// A response line. Empty fields are left out, as Go's own `omitempty` does.
#[derive(Debug, Default, Serialize)]
pub struct Response {
    #[serde(rename = "ID")]
    pub id: i64,
    #[serde(rename = "Err", skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(rename = "KnownCommands", skip_serializing_if = "Vec::is_empty")]
    pub known_commands: Vec<&'static str>,
    #[serde(rename = "Miss", skip_serializing_if = "std::ops::Not::not")]
    pub miss: bool,
    #[serde(rename = "OutputID", skip_serializing_if = "Option::is_none", serialize_with = "base64_id")]
    pub output_id: Option<[u8; 32]>,
    #[serde(rename = "Size", skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(rename = "Time", skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(rename = "DiskPath", skip_serializing_if = "String::is_empty")]
    pub disk_path: String,
}

fn is_zero(size: &u64) -> bool {
    *size == 0
}

fn base64_id<S: serde::Serializer>(id: &Option<[u8; 32]>, serializer: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(bytes) => serializer.serialize_str(&STANDARD.encode(bytes)),
        None => serializer.serialize_none(),
    }
}

impl Response {
    /// The first message, sent before any request: ID 0 and the commands we implement.
    pub fn handshake() -> Self {
        Self { known_commands: KNOWN_COMMANDS.to_vec(), ..Self::default() }
    }

    pub fn miss(id: i64) -> Self {
        Self { id, miss: true, ..Self::default() }
    }

    pub fn hit(id: i64, hit: &Hit) -> Self {
        Self {
            id,
            output_id: Some(hit.output_id.0),
            size: hit.size,
            time: Some(rfc3339(hit.time_unix_nanos)),
            disk_path: hit.disk_path.clone(),
            ..Self::default()
        }
    }

    pub fn stored(id: i64, disk_path: &Path) -> Self {
        Self { id, disk_path: disk_path.to_string_lossy().into_owned(), ..Self::default() }
    }

    pub fn error(id: i64, err: impl Into<String>) -> Self {
        Self { id, err: err.into(), ..Self::default() }
    }

    pub fn closed(id: i64) -> Self {
        Self { id, ..Self::default() }
    }

    /// The response as one line, newline included.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and numbers cannot fail; the fallback keeps the stream
        // well-formed even so, matching the request by its ID.
        let mut line = serde_json::to_vec(self).unwrap_or_else(|err| {
            format!(r#"{{"ID":{},"Err":"encoding failed: {err}"}}"#, self.id).into_bytes()
        });
        line.push(b'\n');
        line
    }
}

/// Go parses `Time` with `time.Time.UnmarshalJSON`, i.e. RFC 3339 with optional fraction.
fn rfc3339(unix_nanos: i64) -> String {
    let since_epoch = Duration::from_nanos(u64::try_from(unix_nanos).unwrap_or(0));
    humantime::format_rfc3339_nanos(UNIX_EPOCH + since_epoch).to_string()
}

/// Now, as Unix nanoseconds.
pub fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    /// A request line as prog.go writes it: JSON, newline, and an extra newline.
    fn get_line(id: i64, action: u8) -> String {
        format!("{{\"ID\":{id},\"Command\":\"get\",\"ActionID\":\"{}\"}}\n\n", b64(&[action; 32]))
    }

    fn put_lines(id: i64, action: u8, body: &[u8]) -> String {
        let mut text = format!(
            "{{\"ID\":{id},\"Command\":\"put\",\"ActionID\":\"{}\",\"OutputID\":\"{}\",\"BodySize\":{}}}\n\n",
            b64(&[action; 32]),
            b64(&[9; 32]),
            body.len()
        );
        if !body.is_empty() {
            text.push_str(&format!("\"{}\"\n", b64(body)));
        }
        text
    }

    /// Feeds `input` in pieces of `step` bytes; returns the events with bodies joined.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<Vec<Event>, ProtocolError> {
        let mut decoder = Decoder::new();
        let mut events: Vec<Event> = Vec::new();
        for piece in input.chunks(step) {
            decoder.push(piece);
            while let Some(event) = decoder.next_event()? {
                match (event, events.last_mut()) {
                    (Event::Body(more), Some(Event::Body(body))) => body.extend(more),
                    (event, _) => events.push(event),
                }
            }
        }
        assert!(decoder.is_between_requests());
        Ok(events)
    }

    #[test]
    fn get_and_close_are_decoded() {
        let input = format!("{}{{\"ID\":2,\"Command\":\"close\"}}\n\n", get_line(1, 7));
        let events = decode_in_steps(input.as_bytes(), 1000).unwrap();
        assert_eq!(
            events,
            vec![
                Event::Request(Request::Get { id: 1, action_id: ActionId([7; 32]) }),
                Event::Request(Request::Close { id: 2 }),
            ]
        );
    }

    #[test]
    fn a_put_body_split_across_reads_is_reassembled() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let input = format!("{}{}", put_lines(1, 3, &body), get_line(2, 4));
        for step in [1, 2, 3, 5, 7, 64, 4093, input.len()] {
            let events = decode_in_steps(input.as_bytes(), step).unwrap();
            assert_eq!(events.len(), 4, "step {step}");
            assert!(matches!(events[0], Event::Request(Request::Put { id: 1, body_size: 10_000, .. })));
            assert_eq!(events[1], Event::Body(body.clone()), "step {step}");
            assert_eq!(events[2], Event::BodyEnd);
            assert!(matches!(events[3], Event::Request(Request::Get { id: 2, .. })));
        }
    }

    #[test]
    fn padded_bodies_of_every_remainder_decode() {
        for len in 1..=7 {
            let body = vec![0xAB; len];
            let events = decode_in_steps(put_lines(1, 1, &body).as_bytes(), 3).unwrap();
            assert_eq!(events[1], Event::Body(body), "len {len}");
        }
    }

    #[test]
    fn an_empty_put_has_no_body_line() {
        let input = format!("{}{}", put_lines(1, 1, b""), get_line(2, 2));
        let events = decode_in_steps(input.as_bytes(), 10).unwrap();
        assert!(matches!(events[0], Event::Request(Request::Put { body_size: 0, .. })));
        assert!(matches!(events[1], Event::Request(Request::Get { id: 2, .. })));
    }

    #[test]
    fn malformed_input_is_refused_with_its_line() {
        let cases: Vec<(String, &str)> = vec![
            ("not json\n".into(), "not a request object"),
            ("{\"ID\":1,\"Command\":\"get\"}\n".into(), "lacks its ActionID"),
            ("{\"ID\":1,\"Command\":\"get\",\"ActionID\":\"AAAA\"}\n".into(), "has 3 bytes, not 32"),
            (put_lines(1, 1, b"hello").replace("\"aGVsbG8=\"", "\"aGVsbG8\""), "multiple of 4"),
            (put_lines(1, 1, b"hello").replace("aGVsbG8=", "aGVs!G8="), "not valid base64"),
            (put_lines(1, 1, b"hello").replace("aGVsbG8=", "aGVsbG8hIQ=="), "more than the 5 bytes"),
            (put_lines(1, 1, b"hello").replace("aGVsbG8=", "aGVs"), "holds 3 bytes, not the 5"),
            (put_lines(1, 1, b"hello").replace("\"aGVsbG8=\"", "aGVsbG8="), "expected the put body"),
        ];
        for (input, expected) in cases {
            let err = decode_in_steps(input.as_bytes(), 4).unwrap_err();
            assert!(err.to_string().contains(expected), "{input:?}: {err}");
        }
        let err = decode_in_steps(b"\n\n{oops}\n", 100).unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut decoder = Decoder::new();
        decoder.push(&vec![b'x'; MAX_LINE + 1]);
        assert!(decoder.next_event().is_err());
    }

    #[test]
    fn unknown_commands_and_fields_are_tolerated() {
        let input = b"{\"ID\":5,\"Command\":\"get2\",\"Extra\":true}\n";
        let events = decode_in_steps(input, 100).unwrap();
        assert_eq!(events, vec![Event::Request(Request::Unknown { id: 5, command: "get2".into() })]);
    }

    #[test]
    fn responses_use_go_field_names() {
        let handshake = String::from_utf8(Response::handshake().encode()).unwrap();
        assert_eq!(handshake, "{\"ID\":0,\"KnownCommands\":[\"get\",\"put\",\"close\"]}\n");
        assert_eq!(Response::miss(3).encode(), b"{\"ID\":3,\"Miss\":true}\n");
        let hit = Hit {
            output_id: OutputId([1; 32]),
            size: 42,
            time_unix_nanos: 1_700_000_000_123_456_789,
            disk_path: "/c/o/01/0101".into(),
        };
        let value: serde_json::Value = serde_json::from_slice(&Response::hit(4, &hit).encode()).unwrap();
        assert_eq!(value["OutputID"], b64(&[1; 32]));
        assert_eq!(value["Size"], 42);
        assert_eq!(value["Time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(value["DiskPath"], "/c/o/01/0101");
        assert!(value.get("Miss").is_none());
    }
}
