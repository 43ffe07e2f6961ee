//! The records a workflow's journal is made of, and how each is stored in the lattice state.
//!
//! Every record has its own key in the bucket [`BUCKET`], and every key has exactly one writer
//! (the node named in the key's epoch), except the control record, which any node may replace.
//! The keys of one workflow `ID`:
//!
//! | key | record | written by |
//! |---|---|---|
//! | `ID/def` | [`Definition`] | the node that started it, once |
//! | `ID/control` | [`Control`] | any node (last writer wins) |
//! | `ID/lease/EPOCH` | [`Lease`] | the epoch's holder; renewals replace it |
//! | `ID/step/NNNNNN/EPOCH` | [`StepRecord`] | the holder of EPOCH, once |
//! | `ID/end/EPOCH` | [`End`] | the holder of EPOCH, once |
//!
//! `EPOCH` is the epoch's counter in 16 hex digits, a dash and the holder's id in hex, so keys
//! sort by epoch. Values are JSON, readable with `alkahest kv get sys:workflows KEY`.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The lattice-state bucket that holds every workflow's records.
pub const BUCKET: &str = "sys:workflows";

/// Longest workflow id.
pub const MAX_ID_LEN: usize = 64;

/// Largest record value accepted by [`Record::decode`].
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// A node's id: its 32-byte public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &hex::encode(self.0)[..12])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        NodeId::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a node id is 64 hex digits"))
    }
}

impl NodeId {
    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(NodeId(bytes))
    }
}

/// Who drives a workflow, and in which term: a counter raised by every takeover, then the
/// holder's id, so two nodes that take over at once never share an epoch and the higher one is
/// the same on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// Raised by one at every takeover; 1 for the node that started the workflow.
    pub n: u64,
    /// The node that holds this epoch.
    pub holder: NodeId,
}

impl Ord for Epoch {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.n, self.holder).cmp(&(other.n, other.holder))
    }
}

impl PartialOrd for Epoch {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Epoch {
    fn key_part(&self) -> String {
        format!("{:016x}-{}", self.n, self.holder)
    }

    fn parse_key_part(text: &str) -> Option<Self> {
        let (n, holder) = text.split_once('-')?;
        if n.len() != 16 {
            return None;
        }
        Some(Epoch {
            n: u64::from_str_radix(n, 16).ok()?,
            holder: NodeId::from_hex(holder)?,
        })
    }
}

/// What a workflow is: written once, when it starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// Which [`Planner`](crate::Planner) drives it (`rollout`, `drain`, …).
    pub kind: String,
    /// The planner's input.
    pub input: Value,
    /// When it started (milliseconds since the Unix epoch, on the starting node's clock).
    pub created_ms: u64,
    /// The node that started it.
    pub created_by: NodeId,
}

/// Why a node holds an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseReason {
    /// It started the workflow.
    Started,
    /// The previous holder was declared dead.
    HolderDead,
    /// The previous holder stopped renewing.
    LeaseLapsed,
    /// It held the previous epoch and took its work back after a restart or a pause.
    Resumed,
}

/// The right to drive a workflow until `expires_ms`; the holder renews it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The epoch this lease is for.
    pub epoch: Epoch,
    /// Until when (holder's clock, milliseconds since the Unix epoch) the holder may drive.
    pub expires_ms: u64,
    /// When the epoch was taken.
    pub taken_ms: u64,
    /// Why.
    pub reason: LeaseReason,
    /// Steps recorded when the epoch was taken: where it resumed.
    pub resumed_at: u32,
}

/// A step's result: its output, or why it failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepResult {
    /// The step did what it should; its output.
    Ok(Value),
    /// The step failed; the planner decides what follows (usually compensation).
    Err(String),
}

impl StepResult {
    /// Whether the step succeeded.
    pub fn is_ok(&self) -> bool {
        matches!(self, StepResult::Ok(_))
    }
}

/// One completed step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Its position in the journal, from 0.
    pub index: u32,
    /// Its name (what the executor runs).
    pub name: String,
    /// Its input.
    pub input: Value,
    /// Set when this step undoes an earlier one: that step's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensates: Option<u32>,
    /// What it produced.
    pub result: StepResult,
    /// The epoch that ran it.
    pub epoch: Epoch,
    /// When it started and finished (the holder's clock).
    pub started_ms: u64,
    /// See `started_ms`.
    pub finished_ms: u64,
}

/// How a workflow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every step done.
    Finished,
    /// A step failed (or a gate did) and the done steps were undone.
    RolledBack,
    /// A step failed and nothing could be undone.
    Failed,
    /// Cancelled by an operator; done steps undone.
    Cancelled,
    /// Another workflow took its place.
    Superseded,
}

impl Outcome {
    /// The outcome's name, as the CLI prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finished => "finished",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Superseded => "superseded",
        }
    }
}

/// The end of a workflow, written by the holder of an epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// The epoch that ended it.
    pub epoch: Epoch,
    /// How.
    pub outcome: Outcome,
    /// Why, in words.
    pub reason: String,
    /// When (the holder's clock).
    pub at_ms: u64,
}

/// An operator's requests to a running workflow: any node may write it, the last write wins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Control {
    /// No new step starts while set.
    pub paused: bool,
    /// Set once: the planner undoes what was done and ends the workflow as cancelled.
    pub cancel: bool,
    /// When it was last changed.
    pub at_ms: u64,
    /// The workflow holds before starting the step of this name (as if paused there), until
    /// resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_before: Option<String>,
}

/// One record of a workflow's journal.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// `ID/def`.
    Definition(String, Definition),
    /// `ID/control`.
    Control(String, Control),
    /// `ID/lease/EPOCH`.
    Lease(String, Lease),
    /// `ID/step/NNNNNN/EPOCH`.
    Step(String, StepRecord),
    /// `ID/end/EPOCH`.
    End(String, End),
}

/// Why bytes from the lattice state are not a workflow record.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The key has none of the shapes above.
    #[error("not a workflow record key: {0:?}")]
    Key(String),
    /// The value is larger than [`MAX_RECORD_BYTES`].
    #[error("workflow record of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The value does not parse.
    #[error("malformed workflow record {key}: {error}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong.
        error: String,
    },
    /// The value says something else than its key (another epoch or index).
    #[error("workflow record {0} does not match its key")]
    Mismatch(String),
}

/// Whether `id` is a valid workflow id: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Record {
    /// The workflow this record belongs to.
    pub fn workflow(&self) -> &str {
        match self {
            Record::Definition(id, _)
            | Record::Control(id, _)
            | Record::Lease(id, _)
            | Record::Step(id, _)
            | Record::End(id, _) => id,
        }
    }

    /// Its key in [`BUCKET`].
    pub fn key(&self) -> String {
        match self {
            Record::Definition(id, _) => format!("{id}/def"),
            Record::Control(id, _) => format!("{id}/control"),
            Record::Lease(id, l) => format!("{id}/lease/{}", l.epoch.key_part()),
            Record::Step(id, s) => format!("{id}/step/{:06}/{}", s.index, s.epoch.key_part()),
            Record::End(id, e) => format!("{id}/end/{}", e.epoch.key_part()),
        }
    }

    /// Its value in [`BUCKET`].
    pub fn encode(&self) -> Vec<u8> {
        let encoded = match self {
            Record::Definition(_, v) => serde_json::to_vec(v),
            Record::Control(_, v) => serde_json::to_vec(v),
            Record::Lease(_, v) => serde_json::to_vec(v),
            Record::Step(_, v) => serde_json::to_vec(v),
            Record::End(_, v) => serde_json::to_vec(v),
        };
        // Serialising these plain structs into memory cannot fail.
        encoded.unwrap_or_default()
    }

    /// The record stored under `key` with `value`; never panics on any input.
    pub fn decode(key: &str, value: &[u8]) -> Result<Record, DecodeError> {
        if value.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::TooLarge(value.len()));
        }
        let bad_key = || DecodeError::Key(key.chars().take(200).collect());
        let mut parts = key.split('/');
        let id = parts.next().filter(|id| valid_id(id)).ok_or_else(bad_key)?;
        let kind = parts.next().ok_or_else(bad_key)?;
        let rest: Vec<&str> = parts.collect();
        fn parse<T: serde::de::DeserializeOwned>(
            key: &str,
            value: &[u8],
        ) -> Result<T, DecodeError> {
            serde_json::from_slice(value).map_err(|e| DecodeError::Value {
                key: key.chars().take(200).collect(),
                error: e.to_string(),
            })
        }
        let id = id.to_string();
        let record = match (kind, rest.as_slice()) {
            ("def", []) => Record::Definition(id, parse(key, value)?),
            ("control", []) => Record::Control(id, parse(key, value)?),
            ("lease", [epoch]) => {
                let epoch = Epoch::parse_key_part(epoch).ok_or_else(bad_key)?;
                let lease: Lease = parse(key, value)?;
                if lease.epoch != epoch {
                    return Err(DecodeError::Mismatch(key.to_string()));
                }
                Record::Lease(id, lease)
            }
            ("step", [index, epoch]) => {
                let index: u32 = index.parse().map_err(|_| bad_key())?;
                let epoch = Epoch::parse_key_part(epoch).ok_or_else(bad_key)?;
                let step: StepRecord = parse(key, value)?;
                if step.epoch != epoch || step.index != index {
                    return Err(DecodeError::Mismatch(key.to_string()));
                }
                Record::Step(id, step)
            }
            ("end", [epoch]) => {
                let epoch = Epoch::parse_key_part(epoch).ok_or_else(bad_key)?;
                let end: End = parse(key, value)?;
                if end.epoch != epoch {
                    return Err(DecodeError::Mismatch(key.to_string()));
                }
                Record::End(id, end)
            }
            _ => return Err(bad_key()),
        };
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn every_record_round_trips_through_key_and_value() {
        let epoch = Epoch {
            n: 3,
            holder: node(7),
        };
        let records = vec![
            Record::Definition(
                "r-1".into(),
                Definition {
                    kind: "rollout".into(),
                    input: serde_json::json!({"name": "hello"}),
                    created_ms: 5,
                    created_by: node(1),
                },
            ),
            Record::Control(
                "r-1".into(),
                Control {
                    paused: true,
                    cancel: false,
                    at_ms: 9,
                    pause_before: Some("switch".into()),
                },
            ),
            Record::Lease(
                "r-1".into(),
                Lease {
                    epoch,
                    expires_ms: 100,
                    taken_ms: 90,
                    reason: LeaseReason::HolderDead,
                    resumed_at: 2,
                },
            ),
            Record::Step(
                "r-1".into(),
                StepRecord {
                    index: 12,
                    name: "compile".into(),
                    input: Value::Null,
                    compensates: Some(1),
                    result: StepResult::Err("no".into()),
                    epoch,
                    started_ms: 1,
                    finished_ms: 2,
                },
            ),
            Record::End(
                "r-1".into(),
                End {
                    epoch,
                    outcome: Outcome::RolledBack,
                    reason: "gate".into(),
                    at_ms: 4,
                },
            ),
        ];
        for r in records {
            let back = Record::decode(&r.key(), &r.encode()).expect("decodes");
            assert_eq!(back, r);
        }
    }

    #[test]
    fn keys_sort_by_epoch() {
        let low = Epoch {
            n: 2,
            holder: node(9),
        }
        .key_part();
        let high = Epoch {
            n: 10,
            holder: node(1),
        }
        .key_part();
        assert!(low < high);
        assert!(
            Epoch {
                n: 2,
                holder: node(9)
            } < Epoch {
                n: 10,
                holder: node(1)
            }
        );
        assert!(
            Epoch {
                n: 2,
                holder: node(1)
            } < Epoch {
                n: 2,
                holder: node(9)
            }
        );
    }

    #[test]
    fn bad_input_is_refused_without_panicking() {
        let lease = Record::Lease(
            "w".into(),
            Lease {
                epoch: Epoch {
                    n: 1,
                    holder: node(1),
                },
                expires_ms: 1,
                taken_ms: 0,
                reason: LeaseReason::Started,
                resumed_at: 0,
            },
        );
        let other_epoch = format!(
            "w/lease/{}",
            Epoch {
                n: 2,
                holder: node(1)
            }
            .key_part()
        );
        assert!(matches!(
            Record::decode(&other_epoch, &lease.encode()),
            Err(DecodeError::Mismatch(_))
        ));
        for key in [
            "",
            "w",
            "w/nope",
            "a b/def",
            "w/step/x/y",
            "w/lease/zz-00",
            "w/def/extra",
        ] {
            assert!(Record::decode(key, b"{}").is_err(), "{key}");
        }
        assert!(matches!(
            Record::decode("w/def", b"{"),
            Err(DecodeError::Value { .. })
        ));
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            Record::decode("w/def", &huge),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(!valid_id(&"x".repeat(65)));
        assert!(valid_id("r-0a.b_c"));
    }
}
