//! The codec every gRPC method decodes through: prost's, behind a guard on requests.
//!
//! A message costs memory when decoded in proportion to its elements, not its bytes: an empty
//! sub-message or string in a repeated field is 2 bytes on the wire and a whole struct or
//! `String` once decoded, so a 16 MiB request of empty elements became ~650 MiB before any
//! handler could count them. Before decoding a request, the guard walks its wire bytes (tags
//! and lengths only, nothing allocated) with the shapes of the messages generated from the
//! `.proto` files, and refuses one with more elements than its size allows. Every honest
//! request carries at least a name, a hash or a digest per element, well above the bound.
//!
//! Replies decode unguarded: a client trusts the server it asked.

use std::marker::PhantomData;

use prost::{Message, Name};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Elements any request may hold, whatever its size.
const FREE_ELEMENTS: u64 = 4096;
/// Wire bytes per element beyond those: every honest element takes more (a Digest 38).
const MIN_ELEMENT_BYTES: u64 = 16;
/// Nesting walked at most, as prost's own recursion limit.
const MAX_DEPTH: u32 = 100;

#[derive(Debug)]
struct Shape {
    name: &'static str,
    fields: &'static [Field],
}

/// A field that decodes into an element of its own: a sub-message (its shape's index in
/// `MESSAGES`), or any repeated field.
#[derive(Debug)]
struct Field {
    number: u32,
    repeated: bool,
    /// Repeated numbers, which may come packed: up to one per byte.
    numbers: bool,
    message: Option<usize>,
}

include!(concat!(env!("OUT_DIR"), "/wire_shapes.rs"));

fn shape(name: &str) -> Option<&'static Shape> {
    MESSAGES.iter().find(|shape| shape.name == name)
}

/// prost's codec, with requests checked by [`check`] before they are decoded.
#[derive(Debug, Clone)]
pub struct GuardedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for GuardedCodec<T, U> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<T, U> Codec for GuardedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = GuardedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        // Resolved once per call, not per message of a stream.
        let name = U::full_name();
        let shape = if REQUESTS.contains(&name.as_str()) { shape(&name) } else { None };
        GuardedDecoder { inner: ProstDecoder::default(), shape }
    }
}

#[derive(Debug)]
pub struct GuardedDecoder<U> {
    inner: ProstDecoder<U>,
    /// `U`'s shape when it is what a method takes (decoded by the server).
    shape: Option<&'static Shape>,
}

impl<U: Message + Name + Default> Decoder for GuardedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf as _;
        // A message arrives in one piece; were it not, it goes to prost unguarded, as before.
        if let Some(shape) = self.shape.filter(|_| buf.chunk().len() == buf.remaining()) {
            check_shape(shape, buf.chunk())?;
        }
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.inner.buffer_settings()
    }
}

/// Refuses `bytes`, a message of type `name`, if decoding it would make more elements than
/// its size allows.
pub fn check(name: &str, bytes: &[u8]) -> Result<(), Status> {
    shape(name).map_or(Ok(()), |shape| check_shape(shape, bytes))
}

fn check_shape(shape: &Shape, bytes: &[u8]) -> Result<(), Status> {
    let allowed = FREE_ELEMENTS + bytes.len() as u64 / MIN_ELEMENT_BYTES;
    let mut elements = 0;
    count(shape, bytes, 0, &mut elements, allowed);
    if elements > allowed {
        let name = shape.name;
        return Err(Status::invalid_argument(format!(
            "a {name} of {} bytes holds more than {allowed} elements (messages, list items): at \
             most {FREE_ELEMENTS} plus one per {MIN_ELEMENT_BYTES} bytes are decoded; send fewer, \
             fuller items",
            bytes.len()
        )));
    }
    Ok(())
}

/// Adds the elements of the message in `bytes` to `elements`, stopping once past `allowed`.
/// Malformed bytes end the walk: prost refuses them when it decodes.
fn count(shape: &Shape, mut bytes: &[u8], depth: u32, elements: &mut u64, allowed: u64) {
    while !bytes.is_empty() && *elements <= allowed && depth < MAX_DEPTH {
        let Some(key) = varint(&mut bytes) else { return };
        let field = shape.fields.iter().find(|field| u64::from(field.number) == key >> 3);
        let payload = match key & 7 {
            0 => varint(&mut bytes).map(|_| &[][..]),
            1 => take(&mut bytes, 8),
            2 => varint(&mut bytes).and_then(|len| take(&mut bytes, usize::try_from(len).ok()?)),
            5 => take(&mut bytes, 4),
            _ => None,
        };
        let Some(payload) = payload else { return };
        let Some(field) = field else { continue };
        match (field.message, key & 7) {
            (Some(message), 2) => {
                *elements += 1;
                count(&MESSAGES[message], payload, depth + 1, elements, allowed);
            }
            // A packed list of numbers: up to one per byte, 8 bytes each once decoded.
            (None, 2) if field.numbers => *elements += 1 + payload.len() as u64 / 8,
            _ if field.repeated => *elements += 1,
            _ => {}
        }
    }
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if bytes.len() < len {
        return None;
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn digest(seed: u8) -> v1::Digest {
        v1::Digest { hash: vec![seed; 32].into(), size_bytes: 1 << 20 }
    }

    #[test]
    fn honest_requests_at_their_largest_pass() {
        let find = v1::FindMissingRequest { digests: (0..=255).cycle().take(100_000).map(digest).collect() };
        check(&v1::FindMissingRequest::full_name(), &find.encode_to_vec()).unwrap();
        let components = (0..200_000)
            .map(|index| v1::ManifestComponent {
                name: format!("file.{index}.go"),
                hash: vec![7; 32].into(),
                display: String::new(),
            })
            .collect();
        let manifest = v1::BuildManifest { version: 1, components };
        let lookup = v1::BuildLookupRequest { manifest: Some(manifest), ..Default::default() };
        check(&v1::BuildLookupRequest::full_name(), &lookup.encode_to_vec()).unwrap();
    }

    #[test]
    fn long_strings_count_once() {
        let mut lines = vec!["x".repeat(4 << 20)];
        lines.extend((0..5000).map(|n| format!("./main.go:{n}: something went wrong")));
        let progress = v1::ProgressRequest { token: None, started: true, lines };
        check(&v1::ProgressRequest::full_name(), &progress.encode_to_vec()).unwrap();
    }

    #[test]
    fn a_request_of_empty_elements_is_refused_before_it_is_decoded() {
        let components = vec![v1::ManifestComponent::default(); 200_000];
        let manifest = v1::BuildManifest { version: 1, components };
        let lookup = v1::BuildLookupRequest { manifest: Some(manifest), ..Default::default() };
        let err = check(&v1::BuildLookupRequest::full_name(), &lookup.encode_to_vec()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("cached.v1.BuildLookupRequest"), "{}", err.message());
        let ids =
            v1::GoGetManyRequest { namespace: String::new(), action_ids: vec![Default::default(); 100_000] };
        assert!(check(&v1::GoGetManyRequest::full_name(), &ids.encode_to_vec()).is_err());
        // A small request may be made of anything.
        let few = v1::FindMissingRequest { digests: vec![v1::Digest::default(); 1000] };
        check(&v1::FindMissingRequest::full_name(), &few.encode_to_vec()).unwrap();
    }

    #[test]
    fn the_shapes_name_every_request_and_its_nested_messages() {
        for request in REQUESTS {
            assert!(shape(request).is_some(), "{request}");
        }
        let lookup = MESSAGES.iter().position(|shape| shape.name == "cached.v1.BuildLookupRequest").unwrap();
        let manifest = MESSAGES[lookup].fields.iter().find(|field| field.number == 4).unwrap();
        assert_eq!(MESSAGES[manifest.message.unwrap()].name, "cached.v1.BuildManifest");
        assert!(REQUESTS.contains(&"cached.v1.BuildLookupRequest"));
    }
}
