//! The canonical binary encoding shared by every admission type.
//!
//! Integers are fixed-width big-endian, booleans and option tags are exactly
//! `0` or `1`, strings are a one-byte length followed by UTF-8 that passes the
//! field's validation, and label maps are a one-byte count followed by pairs
//! in strictly ascending key order. There is therefore exactly one encoding of
//! every value: decoding rejects anything else, including trailing bytes. The
//! reader checks the remaining length before every read and borrows string
//! bytes from the input, so it never allocates more than the input's size.

use crate::admission::{InviteId, Labels, LatticeId, Region};
use crate::{AdmissionError, PublicKey, Signature};

/// Appends canonical fields to a buffer.
#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub(crate) fn key(&mut self, key: &PublicKey) {
        self.raw(key.as_bytes());
    }

    pub(crate) fn signature(&mut self, sig: &Signature) {
        self.raw(&sig.to_bytes());
    }

    /// A string already validated to be at most 255 bytes.
    pub(crate) fn str(&mut self, s: &str) {
        let len = u8::try_from(s.len()).expect("validated strings are at most 255 bytes");
        self.u8(len);
        self.raw(s.as_bytes());
    }

    pub(crate) fn region(&mut self, region: Option<&Region>) {
        match region {
            None => self.u8(0),
            Some(r) => {
                self.u8(1);
                self.str(r.as_str());
            }
        }
    }

    pub(crate) fn labels(&mut self, labels: &Labels) {
        let count = u8::try_from(labels.len()).expect("label maps are bounded");
        self.u8(count);
        for (k, v) in labels.iter() {
            self.str(k);
            self.str(v);
        }
    }
}

/// Reads canonical fields from a slice, failing with
/// [`AdmissionError::Malformed`] naming `what` is being decoded.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(
        input: &'a [u8],
        what: &'static str,
        max_len: usize,
    ) -> Result<Self, AdmissionError> {
        let reader = Self {
            input,
            pos: 0,
            what,
        };
        if input.len() > max_len {
            return Err(reader.err(format!(
                "{} bytes is more than the {max_len} allowed",
                input.len()
            )));
        }
        Ok(reader)
    }

    pub(crate) fn err(&self, reason: impl Into<String>) -> AdmissionError {
        AdmissionError::Malformed {
            what: self.what,
            reason: reason.into(),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], AdmissionError> {
        let remaining = self.input.len() - self.pos;
        if n > remaining {
            return Err(self.err(format!(
                "truncated: needed {n} more bytes at offset {}, {remaining} left",
                self.pos
            )));
        }
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], AdmissionError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, AdmissionError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn expect_tag(&mut self, tag: u8) -> Result<(), AdmissionError> {
        let found = self.u8()?;
        if found != tag {
            return Err(self.err(format!("type tag {found:#04x}, expected {tag:#04x}")));
        }
        Ok(())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, AdmissionError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, AdmissionError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Reads a `u32` element count and checks, before anything is
    /// allocated, that `count` elements of at least `min_len` bytes each fit
    /// in the remaining input.
    pub(crate) fn count(&mut self, min_len: usize) -> Result<usize, AdmissionError> {
        let count = usize::try_from(self.u32()?).map_err(|_| self.err("count overflows"))?;
        let remaining = self.input.len() - self.pos;
        if count.saturating_mul(min_len) > remaining {
            return Err(self.err(format!(
                "{count} entries of at least {min_len} bytes do not fit in the {remaining} bytes left"
            )));
        }
        Ok(count)
    }

    pub(crate) fn bool(&mut self) -> Result<bool, AdmissionError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.err(format!("boolean byte {other}, expected 0 or 1"))),
        }
    }

    pub(crate) fn key(&mut self) -> Result<PublicKey, AdmissionError> {
        let bytes = self.array::<32>()?;
        PublicKey::from_bytes(&bytes).map_err(|_| self.err("public key is not a valid curve point"))
    }

    pub(crate) fn signature(&mut self) -> Result<Signature, AdmissionError> {
        Ok(Signature::from_bytes(&self.array::<64>()?))
    }

    pub(crate) fn lattice(&mut self) -> Result<LatticeId, AdmissionError> {
        Ok(LatticeId::from_bytes(self.array()?))
    }

    pub(crate) fn invite_id(&mut self) -> Result<InviteId, AdmissionError> {
        Ok(InviteId::from_bytes(self.array()?))
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, AdmissionError> {
        let len = usize::from(self.u8()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.err("string is not UTF-8"))
    }

    pub(crate) fn region(&mut self) -> Result<Option<Region>, AdmissionError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let s = self.str()?;
                Region::new(s)
                    .map(Some)
                    .map_err(|e| self.err(e.to_string()))
            }
            other => Err(self.err(format!("option tag {other}, expected 0 or 1"))),
        }
    }

    pub(crate) fn labels(&mut self) -> Result<Labels, AdmissionError> {
        let count = usize::from(self.u8()?);
        if count > Labels::MAX {
            return Err(self.err(format!("{count} labels, at most {} allowed", Labels::MAX)));
        }
        let mut labels = Labels::new();
        let mut previous: Option<&str> = None;
        for _ in 0..count {
            let k = self.str()?;
            let v = self.str()?;
            if previous.is_some_and(|p| p >= k) {
                return Err(self.err("label keys are not in strictly ascending order"));
            }
            previous = Some(k);
            labels.insert(k, v).map_err(|e| self.err(e.to_string()))?;
        }
        Ok(labels)
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(self) -> Result<(), AdmissionError> {
        let left = self.input.len() - self.pos;
        if left != 0 {
            return Err(self.err(format!("{left} trailing bytes")));
        }
        Ok(())
    }
}
