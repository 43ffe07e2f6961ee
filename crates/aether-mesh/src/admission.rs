//! The node's admission as kept in its data directory: the lattice root's
//! public key, the node certificate, the ledger of admissions it has seen,
//! the revocations it knows and its incarnation counter.
//!
//! Files (all small, written atomically by rename):
//! - `lattice.pub`: the root public key, `ed25519:<base64url>`;
//! - `node.cert`: this node's certificate (binary);
//! - `admissions`: the [`AdmissionLedger`] (binary);
//! - `revocations`: the known revocations (binary, see [`encode_revocations`]);
//! - `incarnation`: decimal, raised on every start.

use std::path::{Path, PathBuf};

use aether_identity::{
    AdmissionLedger, AdmittedNode, InviteConstraints, InviteToken, Labels, LatticeId,
    NodeCertificate, PublicKey, Region, Revocation, SecretKey,
};

use crate::MeshError;

/// Largest number of revocations read from one message or file.
pub const MAX_REVOCATIONS: usize = 4096;

/// How long the one-time invite a first node issues itself stays valid.
const SELF_INVITE_SECS: u64 = 600;

/// How this node got (or keeps) its admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionSource {
    /// Read from the data directory (admitted by an earlier run).
    Stored,
    /// Certified just now with an invite token.
    Invite,
    /// Certified just now with the operator's root key (first node of a lattice).
    RootKey,
}

/// This node's admission: the root it trusts and its certificate.
#[derive(Debug, Clone)]
pub struct NodeAdmission {
    /// The lattice root public key.
    pub root: PublicKey,
    /// This node's certificate.
    pub certificate: NodeCertificate,
    /// What the certificate says once verified.
    pub admitted: AdmittedNode,
    /// Where it came from.
    pub source: AdmissionSource,
}

/// What [`prepare`] needs.
#[derive(Debug, Default)]
pub struct AdmissionRequest<'a> {
    /// `--invite`.
    pub invite: Option<&'a InviteToken>,
    /// The operator's root key, when this machine has it (`ALKAHEST_HOME`).
    /// Used once to admit a node that has neither a stored certificate nor an
    /// invite, then dropped; it is never written to the data directory.
    pub root_key: Option<&'a SecretKey>,
    /// `--region`.
    pub region: Option<&'a str>,
    /// `--label k=v`.
    pub labels: &'a [String],
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Writes `bytes` to `dir/name` atomically (temporary file, fsync, rename).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), MeshError> {
    use std::io::Write as _;
    let target = path(dir, name);
    let tmp = path(dir, &format!(".{name}.tmp"));
    let io = |e: std::io::Error| MeshError::Io {
        path: target.clone(),
        source: e,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &target).map_err(io)
}

fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, MeshError> {
    let p = path(dir, name);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MeshError::Io { path: p, source: e }),
    }
}

/// Decides this node's admission and stores it:
///
/// 1. a certificate stored by an earlier run is reused (an `--invite` given
///    again is ignored when it is for the same lattice, refused otherwise);
/// 2. else an invite certifies the node key;
/// 3. else the operator's root key, when present, issues a one-time invite
///    for this node alone;
/// 4. else the node has no admission (`Ok(None)`): it serves alone.
pub fn prepare(
    data_dir: &Path,
    node_key: &SecretKey,
    request: &AdmissionRequest<'_>,
    now: u64,
) -> Result<Option<NodeAdmission>, MeshError> {
    if let Some(stored) = load_stored(data_dir, node_key, now)? {
        if let Some(token) = request.invite
            && token.lattice() != stored.admitted.lattice()
        {
            return Err(MeshError::Admission(format!(
                "this data directory already belongs to lattice {}, the invite is for lattice {}; \
                 use a fresh --data-dir to join another lattice",
                stored.admitted.lattice(),
                token.lattice()
            )));
        }
        if request.invite.is_some() {
            tracing::info!("already admitted by an earlier run; --invite ignored");
        }
        return Ok(Some(stored));
    }
    let region = request
        .region
        .map(|r| Region::new(r).map_err(|e| MeshError::Admission(format!("--region {r}: {e}"))))
        .transpose()?;
    let mut labels = Labels::new();
    for pair in request.labels {
        let key = pair.split_once('=').map_or(pair.as_str(), |(k, _)| k);
        if crate::BUILTIN_LABELS.contains(&key) {
            return Err(MeshError::Admission(format!(
                "--label {pair}: `{key}` is a built-in label, set from this machine (built-in: {})",
                crate::BUILTIN_LABELS.join(", ")
            )));
        }
        labels
            .insert_pair(pair)
            .map_err(|e| MeshError::Admission(format!("--label {pair}: {e}")))?;
    }
    let (root, certificate, source) = if let Some(token) = request.invite {
        let root = *token.root();
        let cert = NodeCertificate::issue(token, node_key, region, labels, now)
            .map_err(|e| MeshError::Admission(format!("the invite cannot admit this node: {e}")))?;
        (root, cert, AdmissionSource::Invite)
    } else if let Some(root_key) = request.root_key {
        let root = root_key.public();
        let token = aether_identity::Invite::issue(
            root_key,
            LatticeId::of_root(&root),
            InviteConstraints::default(),
            now + SELF_INVITE_SECS,
            true,
            now,
        )
        .map_err(|e| MeshError::Admission(e.to_string()))?;
        let cert = NodeCertificate::issue(&token, node_key, region, labels, now)
            .map_err(|e| MeshError::Admission(e.to_string()))?;
        (root, cert, AdmissionSource::RootKey)
    } else {
        return Ok(None);
    };
    let admitted = certificate
        .verify(&root, now)
        .map_err(|e| MeshError::Admission(format!("the new node certificate: {e}")))?;
    write_atomic(data_dir, "lattice.pub", format!("{root}\n").as_bytes())?;
    write_atomic(data_dir, "node.cert", &certificate.to_bytes())?;
    Ok(Some(NodeAdmission {
        root,
        certificate,
        admitted,
        source,
    }))
}

fn load_stored(
    data_dir: &Path,
    node_key: &SecretKey,
    now: u64,
) -> Result<Option<NodeAdmission>, MeshError> {
    let (Some(root), Some(cert)) = (
        read_optional(data_dir, "lattice.pub")?,
        read_optional(data_dir, "node.cert")?,
    ) else {
        return Ok(None);
    };
    let root_text = String::from_utf8_lossy(&root);
    let root: PublicKey = root_text.trim().parse().map_err(|e| {
        MeshError::Admission(format!(
            "{}: not a public key: {e}",
            path(data_dir, "lattice.pub").display()
        ))
    })?;
    let certificate = NodeCertificate::from_bytes(&cert).map_err(|e| {
        MeshError::Admission(format!("{}: {e}", path(data_dir, "node.cert").display()))
    })?;
    if *certificate.node() != node_key.public() {
        return Err(MeshError::Admission(format!(
            "{} certifies node {}, but this node's key is {}; the node key was replaced, so \
             the node needs a new invite (remove node.cert and pass --invite)",
            path(data_dir, "node.cert").display(),
            certificate.node(),
            node_key.public()
        )));
    }
    let admitted = certificate.verify(&root, now).map_err(|e| {
        MeshError::Admission(format!(
            "{} does not verify: {e}",
            path(data_dir, "node.cert").display()
        ))
    })?;
    Ok(Some(NodeAdmission {
        root,
        certificate,
        admitted,
        source: AdmissionSource::Stored,
    }))
}

/// Reads the stored ledger (empty when there is none).
pub(crate) fn load_ledger(data_dir: &Path) -> Result<AdmissionLedger, MeshError> {
    match read_optional(data_dir, "admissions")? {
        None => Ok(AdmissionLedger::new()),
        Some(bytes) => AdmissionLedger::from_bytes(&bytes).map_err(|e| {
            MeshError::Admission(format!("{}: {e}", path(data_dir, "admissions").display()))
        }),
    }
}

/// Reads the stored revocations, keeping those the root signed.
pub(crate) fn load_revocations(
    data_dir: &Path,
    root: &PublicKey,
) -> Result<Vec<aether_identity::VerifiedRevocation>, MeshError> {
    let Some(bytes) = read_optional(data_dir, "revocations")? else {
        return Ok(Vec::new());
    };
    let list = decode_revocations(&bytes).map_err(|e| {
        MeshError::Admission(format!("{}: {e}", path(data_dir, "revocations").display()))
    })?;
    Ok(list.iter().filter_map(|r| r.verify(root).ok()).collect())
}

/// Raises and stores the incarnation counter; returns the new value (0 on
/// the first start).
pub(crate) fn next_incarnation(data_dir: &Path) -> Result<u32, MeshError> {
    let current = read_optional(data_dir, "incarnation")?
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse::<u32>().ok());
    let next = current.map_or(0, |n| n.wrapping_add(1));
    store_incarnation(data_dir, next)?;
    Ok(next)
}

/// Stores the incarnation counter.
pub(crate) fn store_incarnation(data_dir: &Path, value: u32) -> Result<(), MeshError> {
    write_atomic(data_dir, "incarnation", format!("{value}\n").as_bytes())
}

/// Encodes revocations as `u16 count`, then per revocation `u16 length` and
/// its bytes.
pub fn encode_revocations<'a>(list: impl Iterator<Item = &'a Revocation>) -> Vec<u8> {
    let items: Vec<Vec<u8>> = list.take(MAX_REVOCATIONS).map(|r| r.to_bytes()).collect();
    let mut out = Vec::with_capacity(2 + items.iter().map(|i| i.len() + 2).sum::<usize>());
    out.extend_from_slice(&(items.len() as u16).to_be_bytes());
    for item in items {
        out.extend_from_slice(&(item.len() as u16).to_be_bytes());
        out.extend_from_slice(&item);
    }
    out
}

/// Decodes [`encode_revocations`]; refuses more than [`MAX_REVOCATIONS`],
/// truncation and trailing bytes. Signatures are not checked here.
pub fn decode_revocations(bytes: &[u8]) -> Result<Vec<Revocation>, String> {
    let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if rest.len() < n {
            return Err(format!("truncated: needs {n} more bytes"));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head.to_vec())
    };
    let mut rest = bytes;
    let count = take(&mut rest, 2)?;
    let count = usize::from(u16::from_be_bytes([count[0], count[1]]));
    if count > MAX_REVOCATIONS {
        return Err(format!("{count} revocations, more than {MAX_REVOCATIONS}"));
    }
    let mut out = Vec::with_capacity(count.min(rest.len() / 64 + 1));
    for _ in 0..count {
        let len = take(&mut rest, 2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let item = take(&mut rest, len)?;
        out.push(Revocation::from_bytes(&item).map_err(|e| e.to_string())?);
    }
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        1_800_000_000
    }

    #[test]
    fn first_node_admits_itself_with_the_root_key_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = SecretKey::generate();
        let root = SecretKey::generate();
        let request = AdmissionRequest {
            root_key: Some(&root),
            region: Some("eu-west"),
            ..Default::default()
        };
        let a = prepare(dir.path(), &node, &request, now())
            .expect("prepare")
            .expect("admitted");
        assert_eq!(a.source, AdmissionSource::RootKey);
        assert_eq!(a.root, root.public());
        assert_eq!(a.admitted.region().map(Region::as_str), Some("eu-west"));
        // Only the public root key and the certificate are written.
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["lattice.pub", "node.cert"]);
        let again = prepare(
            dir.path(),
            &node,
            &AdmissionRequest::default(),
            now() + 10_000,
        )
        .expect("prepare")
        .expect("admitted");
        assert_eq!(again.source, AdmissionSource::Stored);
        assert_eq!(again.certificate, a.certificate);
    }

    #[test]
    fn no_invite_and_no_root_key_means_no_admission() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = SecretKey::generate();
        let got = prepare(dir.path(), &node, &AdmissionRequest::default(), now()).expect("ok");
        assert!(got.is_none());
    }

    #[test]
    fn expired_invite_is_refused_before_anything_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = SecretKey::generate();
        let root = SecretKey::generate();
        let token = aether_identity::Invite::issue(
            &root,
            LatticeId::of_root(&root.public()),
            InviteConstraints::default(),
            now() + 60,
            false,
            now(),
        )
        .expect("invite");
        let request = AdmissionRequest {
            invite: Some(&token),
            ..Default::default()
        };
        let err = prepare(dir.path(), &node, &request, now() + 61).expect_err("expired");
        assert!(err.to_string().contains("expired"), "{err}");
        assert!(!dir.path().join("node.cert").exists());
    }

    #[test]
    fn a_stored_certificate_for_another_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = SecretKey::generate();
        let request = AdmissionRequest {
            root_key: Some(&root),
            ..Default::default()
        };
        prepare(dir.path(), &SecretKey::generate(), &request, now()).expect("first");
        let err =
            prepare(dir.path(), &SecretKey::generate(), &request, now()).expect_err("other key");
        assert!(err.to_string().contains("node key was replaced"), "{err}");
    }

    #[test]
    fn a_tampered_stored_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = SecretKey::generate();
        let node = SecretKey::generate();
        let request = AdmissionRequest {
            root_key: Some(&root),
            ..Default::default()
        };
        prepare(dir.path(), &node, &request, now()).expect("first");
        let p = dir.path().join("node.cert");
        let mut bytes = std::fs::read(&p).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, bytes).expect("write");
        let err =
            prepare(dir.path(), &node, &AdmissionRequest::default(), now()).expect_err("tampered");
        assert!(err.to_string().contains("node.cert"), "{err}");
    }

    #[test]
    fn revocation_lists_round_trip_and_garbage_is_refused() {
        let root = SecretKey::generate();
        let list: Vec<Revocation> = (0..3)
            .map(|i| {
                Revocation::issue(
                    &root,
                    &SecretKey::generate().public(),
                    &format!("r{i}"),
                    now(),
                )
                .expect("issue")
            })
            .collect();
        let bytes = encode_revocations(list.iter());
        assert_eq!(decode_revocations(&bytes).expect("decode"), list);
        for cut in 0..bytes.len() {
            assert!(decode_revocations(&bytes[..cut]).is_err());
        }
        assert!(decode_revocations(&[0xff, 0xff]).is_err());
        let mut rng = 1u64;
        for _ in 0..2000 {
            let len = (rng % 200) as usize;
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (rng >> 33) as u8
                })
                .collect();
            let _ = decode_revocations(&garbage);
        }
    }
}
