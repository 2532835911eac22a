//! The lease-credential check on arbitrary bearer text (any caller can send one): nothing
//! panics, anything this server did not mint is refused with a reason, and claims that parse
//! print back to themselves.
#![no_main]

use cached::auth::lease::{CacheClaims, LeaseKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let keys = LeaseKeys::new(&[7; 32]);
    keys.set_minting(true);
    for candidate in [text.to_owned(), format!("cached_lease.{text}")] {
        match keys.verify(&candidate, 0) {
            Ok(claims) => assert_eq!(keys.mint(&claims).as_deref(), Some(candidate.as_str())),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
    if let Some(claims) = CacheClaims::decode(text) {
        assert_eq!(CacheClaims::decode(&claims.encode()), Some(claims));
    }
});
