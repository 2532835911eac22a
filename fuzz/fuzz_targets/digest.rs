//! Text digests (`<64 hex>/<size>`, what `cachectl get` and `has` take), wire digests and Go IDs:
//! never a panic, and whatever parses prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{ActionId, Digest, OutputId};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(digest) = text.parse::<Digest>()
    {
        let printed = digest.to_string();
        assert_eq!(printed.parse::<Digest>(), Ok(digest));
        assert_eq!(
            printed.to_ascii_lowercase(),
            text.split_once('/').map_or(String::new(), |(hex, _)| {
                format!("{}/{}", hex.to_ascii_lowercase(), digest.size)
            })
        );
    }
    let wire = proto::v1::Digest { hash: data.to_vec().into(), size_bytes: data.len() as u64 };
    if let Ok(digest) = Digest::from_wire(Some(&wire)) {
        assert_eq!(digest.to_wire(), wire);
    }
    let _ = ActionId::try_from(data);
    let _ = OutputId::try_from(data);
});
