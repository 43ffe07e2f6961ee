//! Essences: a component and its manifest sealed into one signed file.
//!
//! An essence is what `alkahest seal` writes and what nodes run. Layout (all
//! integers little-endian):
//!
//! ```text
//! "AETHESS1"                      8 bytes, magic and format version
//! u32 header_len, header          canonical JSON: hashes, publisher, signature
//! u32 manifest_len, manifest      the manifest's canonical JSON
//! u64 component_len, component    the component's bytes
//! ```
//!
//! The publisher signs `"aether-essence-v1\0" || sha256(manifest) ||
//! sha256(component)`. Opening an essence checks the framing and both hashes;
//! [`Essence::verify`] then checks the signature strictly and that the
//! publisher is trusted. Nothing is run before both pass.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use aether_identity::{PublicKey, SecretKey, Signature, TrustedKeys};
use aether_manifest::Manifest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Magic bytes and format version at the start of every essence.
pub const MAGIC: &[u8; 8] = b"AETHESS1";
/// Domain separator of the signed message.
const SIGNING_CONTEXT: &[u8] = b"aether-essence-v1\0";
/// Largest header or manifest accepted (they are small JSON documents).
const MAX_JSON: usize = 1 << 20;

/// Why an essence was refused.
#[derive(Debug, thiserror::Error)]
pub enum EssenceError {
    /// Not an essence file at all.
    #[error(
        "not an essence: it does not start with `AETHESS1` (seal a component with `alkahest seal`)"
    )]
    BadMagic,
    /// The file ends early or has trailing bytes.
    #[error("essence is truncated or malformed: {0}")]
    Malformed(&'static str),
    /// The header is not the expected JSON.
    #[error("essence header is malformed: {0}")]
    BadHeader(String),
    /// The manifest inside is invalid.
    #[error("manifest inside the essence is invalid: {0}")]
    BadManifest(String),
    /// A hash does not match the bytes: the file was altered after sealing.
    #[error("essence was tampered with: the {0} does not match the hash that was signed")]
    Tampered(&'static str),
    /// The essence carries no signature.
    #[error("essence is unsigned; seal it with `alkahest seal` using a publisher key")]
    Unsigned,
    /// The signature does not verify against the publisher key.
    #[error("essence signature is invalid for publisher {0}: the essence was forged or altered")]
    BadSignature(String),
    /// Signed correctly, but by a key this node does not trust.
    #[error(
        "essence publisher {0} is not trusted by this node; add it with `--trust-publisher` \
         or seal with a trusted key"
    )]
    Untrusted(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    format: u32,
    manifest_sha256: String,
    component_sha256: String,
    publisher: String,
    signature: String,
}

/// An essence whose framing and hashes are checked but whose signature and
/// publisher are not yet: call [`Essence::verify`] before using it.
#[derive(Debug, Clone)]
pub struct Essence {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    component: Vec<u8>,
    component_hash: String,
    publisher: Option<PublicKey>,
    signature: Option<Signature>,
}

/// An essence whose signature verified against a trusted publisher.
#[derive(Debug, Clone)]
pub struct VerifiedEssence(Essence);

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn signed_message(manifest_hash: &str, component_hash: &str) -> Vec<u8> {
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(manifest_hash.as_bytes());
    msg.push(b'\n');
    msg.extend_from_slice(component_hash.as_bytes());
    msg
}

/// Seals `component` and `manifest` into essence bytes signed by `publisher`.
pub fn seal(manifest: &Manifest, component: &[u8], publisher: &SecretKey) -> Vec<u8> {
    let manifest_bytes = manifest.to_canonical_json();
    let manifest_hash = sha256_hex(&manifest_bytes);
    let component_hash = sha256_hex(component);
    let signature = publisher.sign(&signed_message(&manifest_hash, &component_hash));
    let header = Header {
        format: 1,
        manifest_sha256: manifest_hash,
        component_sha256: component_hash,
        publisher: publisher.public().to_string(),
        signature: STANDARD.encode(signature.to_bytes()),
    };
    encode(&header, &manifest_bytes, component)
}

fn encode(header: &Header, manifest: &[u8], component: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(32 + header.len() + manifest.len() + component.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&(component.len() as u64).to_le_bytes());
    out.extend_from_slice(component);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EssenceError> {
        if self.0.len() < n {
            return Err(EssenceError::Malformed(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<usize, EssenceError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self, what: &'static str) -> Result<usize, EssenceError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(a)).map_err(|_| EssenceError::Malformed(what))
    }
}

impl Essence {
    /// Parses essence bytes and checks that both hashes match their contents.
    pub fn open(bytes: &[u8]) -> Result<Self, EssenceError> {
        let mut r = Reader(bytes);
        if r.take(8, "magic").map_err(|_| EssenceError::BadMagic)? != MAGIC {
            return Err(EssenceError::BadMagic);
        }
        let header_len = r.u32("header length")?;
        if header_len > MAX_JSON {
            return Err(EssenceError::Malformed("header too large"));
        }
        let header: Header = serde_json::from_slice(r.take(header_len, "header")?)
            .map_err(|e| EssenceError::BadHeader(e.to_string()))?;
        if header.format != 1 {
            return Err(EssenceError::BadHeader(format!(
                "format {} is not supported (this node reads format 1)",
                header.format
            )));
        }
        let manifest_len = r.u32("manifest length")?;
        if manifest_len > MAX_JSON {
            return Err(EssenceError::Malformed("manifest too large"));
        }
        let manifest_bytes = r.take(manifest_len, "manifest")?.to_vec();
        let component_len = r.u64("component length")?;
        let component = r.take(component_len, "component")?.to_vec();
        if !r.0.is_empty() {
            return Err(EssenceError::Malformed(
                "trailing bytes after the component",
            ));
        }
        if sha256_hex(&manifest_bytes) != header.manifest_sha256 {
            return Err(EssenceError::Tampered("manifest"));
        }
        let component_hash = sha256_hex(&component);
        if component_hash != header.component_sha256 {
            return Err(EssenceError::Tampered("component"));
        }
        let manifest = Manifest::from_canonical_json(&manifest_bytes)
            .map_err(|e| EssenceError::BadManifest(e.to_string()))?;
        let publisher = if header.publisher.is_empty() {
            None
        } else {
            Some(
                header
                    .publisher
                    .parse::<PublicKey>()
                    .map_err(|e| EssenceError::BadHeader(e.to_string()))?,
            )
        };
        let signature = if header.signature.is_empty() {
            None
        } else {
            let raw = STANDARD
                .decode(&header.signature)
                .map_err(|_| EssenceError::BadHeader("signature is not base64".into()))?;
            Some(
                aether_identity::signature_from_slice(&raw)
                    .ok_or_else(|| EssenceError::BadHeader("signature is not 64 bytes".into()))?,
            )
        };
        Ok(Self {
            manifest,
            manifest_bytes,
            component,
            component_hash,
            publisher,
            signature,
        })
    }

    /// Checks the signature strictly and that the publisher is in `trusted`.
    pub fn verify(self, trusted: &TrustedKeys) -> Result<VerifiedEssence, EssenceError> {
        let (Some(publisher), Some(signature)) = (self.publisher, self.signature) else {
            return Err(EssenceError::Unsigned);
        };
        let msg = signed_message(&sha256_hex(&self.manifest_bytes), &self.component_hash);
        if !publisher.verify(&msg, &signature) {
            return Err(EssenceError::BadSignature(publisher.to_string()));
        }
        if !trusted.contains(&publisher) {
            return Err(EssenceError::Untrusted(publisher.to_string()));
        }
        Ok(VerifiedEssence(self))
    }

    /// The manifest (not yet verified).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The publisher key named in the header, if any.
    pub fn publisher(&self) -> Option<PublicKey> {
        self.publisher
    }
}

impl VerifiedEssence {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.0.manifest
    }

    /// The verified component bytes.
    pub fn component(&self) -> &[u8] {
        &self.0.component
    }

    /// Hex SHA-256 of the component bytes.
    pub fn component_hash(&self) -> &str {
        &self.0.component_hash
    }

    /// The trusted key that signed it.
    pub fn publisher(&self) -> PublicKey {
        // verify() only builds this with a publisher present.
        self.0
            .publisher
            .unwrap_or_else(|| unreachable!("verified essences always carry a publisher"))
    }

    /// Consumes it, returning the manifest and the component bytes.
    pub fn into_parts(self) -> (Manifest, Vec<u8>) {
        (self.0.manifest, self.0.component)
    }
}

/// Test helper: essence bytes with an empty signature, as a careless tool might write.
#[doc(hidden)]
pub fn seal_unsigned_for_tests(manifest: &Manifest, component: &[u8]) -> Vec<u8> {
    let manifest_bytes = manifest.to_canonical_json();
    let header = Header {
        format: 1,
        manifest_sha256: sha256_hex(&manifest_bytes),
        component_sha256: sha256_hex(component),
        publisher: String::new(),
        signature: String::new(),
    };
    encode(&header, &manifest_bytes, component)
}
