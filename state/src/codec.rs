//! The value encoding of the state store: the only module that knows which serializer is used.
//!
//! Values are encoded with bincode 2's serde API and its standard configuration (little
//! endian, variable-length integers). The encoding carries no per-value version tag: the
//! store records [`FORMAT`] once, when it is created, and refuses to open a store written in
//! another format (see `StateStore::open`). Swapping the serializer (for example for
//! wincode) therefore means changing this module and [`FORMAT`] together; an old store is then
//! reported as incompatible instead of being decoded into garbage.
//!
//! [`decode`] insists that the whole input is consumed, so bytes of another shape are more
//! likely to be reported as an error than to be silently misread.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The name of this encoding, recorded in every store at creation.
pub const FORMAT: &str = "bincode-2/serde/standard";

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CodecError(#[from] Failure);

#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("cannot encode value: {0}")]
    Encode(#[source] bincode::error::EncodeError),
    #[error("cannot decode value: {0}")]
    Decode(#[source] bincode::error::DecodeError),
    #[error("cannot decode value: {trailing} bytes left over after it")]
    TrailingBytes { trailing: usize },
}

/// Encodes `value` in the store's format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|err| Failure::Encode(err).into())
}

/// Decodes a `T` from `bytes`, which must hold exactly one encoded value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(Failure::Decode)?;
    if read != bytes.len() {
        return Err(Failure::TrailingBytes {
            trailing: bytes.len() - read,
        }
        .into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::{decode, encode};

    #[test]
    fn round_trips_and_rejects_trailing_bytes() {
        let value = (7u64, "shop".to_owned(), Some(vec![1u8, 2, 3]));
        let mut bytes = encode(&value).unwrap();
        assert_eq!(
            decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap(),
            value
        );
        bytes.push(0);
        let err = decode::<(u64, String, Option<Vec<u8>>)>(&bytes).unwrap_err();
        assert!(err.to_string().contains("1 bytes left over"), "{err}");
    }

    #[test]
    fn decode_error_keeps_its_source() {
        let err = decode::<String>(&[5, b'a']).unwrap_err();
        assert!(err.source().is_some(), "{err:?}");
    }
}
