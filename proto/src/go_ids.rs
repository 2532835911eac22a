use std::fmt;

/// A Go action ID or output ID: 32 bytes (SHA-256 in today's go command).
macro_rules! go_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Go's ", $what, ": 32 bytes.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl TryFrom<&[u8]> for $name {
            type Error = GoIdError;

            fn try_from(bytes: &[u8]) -> Result<Self, GoIdError> {
                bytes.try_into().map(Self).map_err(|_| GoIdError { what: $what, len: bytes.len() })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // blake3's encoder is only a fast 32-byte hex encoder here (as in
                // `Digest::hex`); `{:02x}` byte by byte was a twentieth of a warm bridge
                // lookup's CPU, which names two files by these IDs.
                f.write_str(&blake3::Hash::from_bytes(self.0).to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }
    };
}

go_id!(ActionId, "ActionID");
go_id!(OutputId, "OutputID");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a Go {what} is 32 bytes, got {len}")]
pub struct GoIdError {
    what: &'static str,
    len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_64_lowercase_hex_digits() {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&[0x00, 0x0f, 0xa5, 0xff]);
        bytes[31] = 0x10;
        let expected = format!("000fa5ff{}10", "00".repeat(27));
        assert_eq!(ActionId(bytes).to_string(), expected);
        assert_eq!(OutputId(bytes).to_string(), expected);
        assert_eq!(format!("{:?}", OutputId(bytes)), format!("OutputId({expected})"));
    }
}
