//! Signed updates and their canonical encoding.

use std::collections::BTreeMap;

use aether_identity::{PublicKey, SecretKey, Signature};
use bytes::Bytes;

use crate::hlc::Timestamp;
use crate::vv::{MAX_WRITERS, NodeId, VersionVector};

/// Longest bucket name, in bytes of UTF-8.
pub const MAX_BUCKET_LEN: usize = 128;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest value, in bytes (1 MiB).
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Largest encoded update: every field at its limit.
pub const MAX_ENCODED_LEN: usize = 1
    + 2
    + MAX_BUCKET_LEN
    + 2
    + MAX_KEY_LEN
    + 1
    + 4
    + MAX_VALUE_LEN
    + 4
    + MAX_WRITERS * 40
    + 12
    + 32
    + 64;

/// Domain separator prefixed to the signed bytes, so an update signature can
/// never be mistaken for any other Aether signature.
pub const SIGNING_DOMAIN: &[u8] = b"aether-state/signed-update/v1\0";

const FORMAT: u8 = 1;
const TAG_TOMBSTONE: u8 = 0;
const TAG_VALUE: u8 = 1;

/// Why an update is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// Empty bucket name.
    #[error("empty bucket name")]
    EmptyBucket,
    /// Bucket name longer than [`MAX_BUCKET_LEN`].
    #[error("bucket name longer than {MAX_BUCKET_LEN} bytes")]
    BucketTooLong,
    /// Empty key.
    #[error("empty key")]
    EmptyKey,
    /// Key longer than [`MAX_KEY_LEN`].
    #[error("key longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    /// Value larger than [`MAX_VALUE_LEN`].
    #[error("value larger than {MAX_VALUE_LEN} bytes")]
    ValueTooLarge,
    /// Vector naming more than [`MAX_WRITERS`] writers.
    #[error("version vector names more than {MAX_WRITERS} writers")]
    TooManyWriters,
    /// The origin's own counter is 0: the update does not count itself.
    #[error("the origin's counter in the version vector is 0")]
    OriginNotInVector,
}

/// Why bytes are not an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Input ends early.
    #[error("truncated update")]
    Truncated,
    /// Bytes after the signature.
    #[error("trailing bytes after update")]
    TrailingBytes,
    /// Unknown format byte.
    #[error("unknown update format {0}")]
    UnknownFormat(u8),
    /// Unknown value tag.
    #[error("unknown value tag {0}")]
    UnknownValueTag(u8),
    /// Bucket not UTF-8.
    #[error("bucket name is not UTF-8")]
    BucketNotUtf8,
    /// Vector entries not strictly ascending, or a zero counter.
    #[error("version vector not in canonical form")]
    VectorNotCanonical,
    /// Well-formed bytes, invalid update.
    #[error(transparent)]
    Invalid(#[from] UpdateError),
}

/// Why a signature check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The key given is not the update's origin.
    #[error("key is not the update's origin")]
    WrongKey,
    /// The signature does not verify (strictly).
    #[error("bad signature")]
    BadSignature,
}

/// One change to one entry, signed by the node that made it.
///
/// Encoding (all integers big-endian), signed as `SIGNING_DOMAIN || body`:
///
/// ```text
/// body = format:u8 (=1)
///        bucket_len:u16  bucket (UTF-8)
///        key_len:u16     key
///        tag:u8 (0 tombstone | 1 value) [value_len:u32 value]
///        writers:u32 { node_id:[u8;32] counter:u64 }*   (ascending ids, counters >= 1)
///        physical_ms:u64 logical:u32
///        origin:[u8;32]
/// encode() = body || signature:[u8;64]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedUpdate {
    bucket: String,
    key: Bytes,
    value: Option<Bytes>,
    vector: VersionVector,
    timestamp: Timestamp,
    origin: NodeId,
    signature: [u8; 64],
}

/// Length of an encoded update with these field sizes (`None`: tombstone).
pub(crate) fn encoded_len_of(
    bucket: usize,
    key: usize,
    value: Option<usize>,
    writers: usize,
) -> usize {
    1 + 2 + bucket + 2 + key + 1 + value.map_or(0, |v| 4 + v) + 4 + 40 * writers + 12 + 32 + 64
}

pub(crate) fn validate(
    bucket: &str,
    key: &[u8],
    value: Option<&[u8]>,
    vector: &VersionVector,
    origin: &NodeId,
) -> Result<(), UpdateError> {
    if bucket.is_empty() {
        return Err(UpdateError::EmptyBucket);
    }
    if bucket.len() > MAX_BUCKET_LEN {
        return Err(UpdateError::BucketTooLong);
    }
    if key.is_empty() {
        return Err(UpdateError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(UpdateError::KeyTooLong);
    }
    if value.is_some_and(|v| v.len() > MAX_VALUE_LEN) {
        return Err(UpdateError::ValueTooLarge);
    }
    if vector.len() > MAX_WRITERS {
        return Err(UpdateError::TooManyWriters);
    }
    if vector.get(origin) == 0 {
        return Err(UpdateError::OriginNotInVector);
    }
    Ok(())
}

impl SignedUpdate {
    /// Creates and signs an update. `vector` is the writer's version vector
    /// for the entry after this write (its own counter already incremented);
    /// `value` `None` is a tombstone.
    pub fn new(
        secret: &SecretKey,
        bucket: impl Into<String>,
        key: impl Into<Bytes>,
        value: Option<Bytes>,
        vector: VersionVector,
        timestamp: Timestamp,
    ) -> Result<Self, UpdateError> {
        let bucket = bucket.into();
        let key = key.into();
        let origin = NodeId(*secret.public().as_bytes());
        validate(&bucket, &key, value.as_deref(), &vector, &origin)?;
        let mut update = Self {
            bucket,
            key,
            value,
            vector,
            timestamp,
            origin,
            signature: [0; 64],
        };
        update.signature = secret.sign(&update.signed_bytes()).to_bytes();
        Ok(update)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
    /// The key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }
    /// The value; `None` is a tombstone.
    pub fn value(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }
    /// The writer's version vector for the entry.
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }
    /// The HLC timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
    /// The origin node.
    pub fn origin(&self) -> &NodeId {
        &self.origin
    }
    /// The signature bytes.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        // Lengths are bounded by validate(), so the casts cannot truncate.
        out.extend_from_slice(&(self.bucket.len() as u16).to_be_bytes());
        out.extend_from_slice(self.bucket.as_bytes());
        out.extend_from_slice(&(self.key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.key);
        match &self.value {
            None => out.push(TAG_TOMBSTONE),
            Some(v) => {
                out.push(TAG_VALUE);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
        self.vector.encode_into(out);
        out.extend_from_slice(&self.timestamp.physical_ms.to_be_bytes());
        out.extend_from_slice(&self.timestamp.logical.to_be_bytes());
        out.extend_from_slice(&self.origin.0);
    }

    /// The bytes the signature covers: `SIGNING_DOMAIN || body`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + self.encoded_len_hint());
        out.extend_from_slice(SIGNING_DOMAIN);
        self.encode_body(&mut out);
        out
    }

    /// The length of [`encode`](Self::encode)'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        encoded_len_of(
            self.bucket.len(),
            self.key.len(),
            self.value.as_ref().map(|v| v.len()),
            self.vector.len(),
        )
    }

    fn encoded_len_hint(&self) -> usize {
        64 + 64
            + self.bucket.len()
            + self.key.len()
            + self.value.as_ref().map_or(0, |v| v.len())
            + self.vector.len() * 40
    }

    /// The canonical encoding (body and signature).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        self.encode_body(&mut out);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Strictly verifies the signature with the origin's key.
    pub fn verify(&self, origin_key: &PublicKey) -> Result<(), VerifyError> {
        if origin_key.as_bytes() != &self.origin.0 {
            return Err(VerifyError::WrongKey);
        }
        let sig = Signature::from_bytes(&self.signature);
        if origin_key.verify(&self.signed_bytes(), &sig) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature)
        }
    }

    /// Decodes one update, exactly (trailing bytes are refused). Every length
    /// is checked against its limit and the remaining input before anything
    /// is allocated. The signature is *not* checked here: see [`Self::verify`].
    pub fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(input);
        let format = r.u8()?;
        if format != FORMAT {
            return Err(DecodeError::UnknownFormat(format));
        }
        let bucket_len = usize::from(r.u16()?);
        if bucket_len > MAX_BUCKET_LEN {
            return Err(UpdateError::BucketTooLong.into());
        }
        let bucket = std::str::from_utf8(r.take(bucket_len)?)
            .map_err(|_| DecodeError::BucketNotUtf8)?
            .to_owned();
        let key_len = usize::from(r.u16()?);
        if key_len > MAX_KEY_LEN {
            return Err(UpdateError::KeyTooLong.into());
        }
        let key = Bytes::copy_from_slice(r.take(key_len)?);
        let value = match r.u8()? {
            TAG_TOMBSTONE => None,
            TAG_VALUE => {
                let len = r.u32()? as usize;
                if len > MAX_VALUE_LEN {
                    return Err(UpdateError::ValueTooLarge.into());
                }
                Some(Bytes::copy_from_slice(r.take(len)?))
            }
            t => return Err(DecodeError::UnknownValueTag(t)),
        };
        let writers = r.u32()? as usize;
        if writers > MAX_WRITERS {
            return Err(UpdateError::TooManyWriters.into());
        }
        if writers * 40 > r.0.len() {
            return Err(DecodeError::Truncated);
        }
        let mut map = BTreeMap::new();
        let mut prev: Option<NodeId> = None;
        for _ in 0..writers {
            let id = NodeId(r.array::<32>()?);
            let counter = r.u64()?;
            if counter == 0 || prev.is_some_and(|p| p >= id) {
                return Err(DecodeError::VectorNotCanonical);
            }
            prev = Some(id);
            map.insert(id, counter);
        }
        let vector = VersionVector::from_map_unchecked(map);
        let timestamp = Timestamp::new(r.u64()?, r.u32()?);
        let origin = NodeId(r.array::<32>()?);
        let signature = r.array::<64>()?;
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        validate(&bucket, &key, value.as_deref(), &vector, &origin)?;
        Ok(Self {
            bucket,
            key,
            value,
            vector,
            timestamp,
            origin,
            signature,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secret: &SecretKey) -> SignedUpdate {
        let me = NodeId(*secret.public().as_bytes());
        let vv = VersionVector::new().incremented(me).unwrap();
        SignedUpdate::new(
            secret,
            "routes",
            Bytes::from_static(b"k"),
            Some(Bytes::from_static(b"v")),
            vv,
            Timestamp::new(5, 1),
        )
        .unwrap()
    }

    #[test]
    fn roundtrip_and_verify() {
        let sk = SecretKey::from_bytes(&[7; 32]);
        let u = sample(&sk);
        let bytes = u.encode();
        assert_eq!(u.encoded_len(), bytes.len());
        let d = SignedUpdate::decode(&bytes).unwrap();
        assert_eq!(d, u);
        d.verify(&sk.public()).unwrap();
        let other = SecretKey::from_bytes(&[8; 32]).public();
        assert_eq!(d.verify(&other), Err(VerifyError::WrongKey));
        for cut in 0..bytes.len() {
            assert!(SignedUpdate::decode(&bytes[..cut]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(SignedUpdate::decode(&long), Err(DecodeError::TrailingBytes));
    }

    #[test]
    fn tampering_breaks_signature() {
        let sk = SecretKey::from_bytes(&[7; 32]);
        let bytes = sample(&sk).encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            if let Ok(u) = SignedUpdate::decode(&b) {
                assert!(u.verify(&sk.public()).is_err(), "byte {i}");
            }
        }
    }

    #[test]
    fn limits() {
        let sk = SecretKey::from_bytes(&[7; 32]);
        let me = NodeId(*sk.public().as_bytes());
        let vv = VersionVector::new().incremented(me).unwrap();
        let t = Timestamp::default();
        let big = Bytes::from(vec![0; MAX_VALUE_LEN + 1]);
        assert_eq!(
            SignedUpdate::new(&sk, "b", &b"k"[..], Some(big), vv.clone(), t),
            Err(UpdateError::ValueTooLarge)
        );
        assert_eq!(
            SignedUpdate::new(&sk, "", &b"k"[..], None, vv.clone(), t),
            Err(UpdateError::EmptyBucket)
        );
        assert_eq!(
            SignedUpdate::new(&sk, "b", &b"k"[..], None, VersionVector::new(), t),
            Err(UpdateError::OriginNotInVector)
        );
    }
}
