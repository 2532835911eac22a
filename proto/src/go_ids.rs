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
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
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
