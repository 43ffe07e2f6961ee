//! Per-node metadata and its bounded encoding.

use std::net::SocketAddr;

use bytes::{Buf, BufMut};

use crate::Identity;
use crate::vivaldi::Coordinate;
use crate::wire::{self, DecodeError};

/// Upper bound of a node's encoded [`Metadata`] in bytes.
pub const MAX_METADATA_BYTES: usize = 1024;
/// Most labels a node may carry: the 16 of its certificate and the built-in ones the daemon adds
/// (architecture, OS, cores, memory), with room to spare.
pub const MAX_LABELS: usize = 24;
/// Longest label key, region or version string, in bytes.
pub const MAX_SHORT_STR: usize = 64;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 128;

/// What a node says about itself. Disseminated to every member; see [`MAX_METADATA_BYTES`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    /// Region (sector), e.g. `eu-west`. At most [`MAX_SHORT_STR`] bytes.
    pub region: String,
    /// Free-form `key=value` labels: at most [`MAX_LABELS`], keys up to [`MAX_SHORT_STR`] and
    /// values up to [`MAX_LABEL_VALUE`] bytes.
    pub labels: Vec<(String, String)>,
    /// What the node has.
    pub capacity: Capacity,
    /// What the node is doing.
    pub load: Load,
    /// Where the node serves HTTP ingress, if it does.
    pub http_addr: Option<SocketAddr>,
    /// Software version. At most [`MAX_SHORT_STR`] bytes.
    pub version: String,
}

/// A node's resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// CPU cores.
    pub cores: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// A node's current load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    /// Running component instances.
    pub instances: u32,
    /// Requests per second.
    pub request_rate: f32,
    /// CPU use, percent of all cores (0–100).
    pub cpu_percent: f32,
}

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The encoded metadata is over the bound.
    #[error(
        "node metadata is {size} bytes encoded, more than the {max}-byte limit; use fewer or shorter labels"
    )]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Bound.
        max: usize,
    },
    /// Too many labels.
    #[error("{count} labels given, at most {max} are allowed")]
    TooManyLabels {
        /// Labels given.
        count: usize,
        /// Bound.
        max: usize,
    },
    /// A string field is too long.
    #[error("{field} is {len} bytes, at most {max} are allowed")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// Bound.
        max: usize,
    },
    /// A load figure is negative or not a number.
    #[error("{0} must be a finite, non-negative number")]
    BadNumber(&'static str),
}

impl Metadata {
    /// The value of label `key`, if the node carries it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Check every bound, returning the encoded size.
    pub fn validate(&self) -> Result<usize, MetadataError> {
        let short = |field, s: &str, max| {
            if s.len() > max {
                Err(MetadataError::FieldTooLong {
                    field,
                    len: s.len(),
                    max,
                })
            } else {
                Ok(())
            }
        };
        short("region", &self.region, MAX_SHORT_STR)?;
        short("version", &self.version, MAX_SHORT_STR)?;
        if self.labels.len() > MAX_LABELS {
            return Err(MetadataError::TooManyLabels {
                count: self.labels.len(),
                max: MAX_LABELS,
            });
        }
        for (k, v) in &self.labels {
            short("label key", k, MAX_SHORT_STR)?;
            short("label value", v, MAX_LABEL_VALUE)?;
        }
        for (name, x) in [
            ("request rate", self.load.request_rate),
            ("CPU percent", self.load.cpu_percent),
        ] {
            if !x.is_finite() || x < 0.0 {
                return Err(MetadataError::BadNumber(name));
            }
        }
        let size = self.encoded_len();
        if size > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge {
                size,
                max: MAX_METADATA_BYTES,
            });
        }
        Ok(size)
    }

    /// Size of the encoded form, in bytes.
    pub fn encoded_len(&self) -> usize {
        let s = |x: &str| 1 + x.len();
        s(&self.region)
            + s(&self.version)
            + 1
            + self
                .http_addr
                .map_or(0, |a| if a.is_ipv4() { 7 } else { 19 })
            + 12
            + 12
            + 1
            + self.labels.iter().map(|(k, v)| s(k) + s(v)).sum::<usize>()
    }

    pub(crate) fn encode(&self, buf: &mut impl BufMut) {
        wire::put_str(buf, &self.region);
        wire::put_str(buf, &self.version);
        match &self.http_addr {
            Some(a) => {
                buf.put_u8(1);
                wire::put_addr(buf, a);
            }
            None => buf.put_u8(0),
        }
        buf.put_u32(self.capacity.cores);
        buf.put_u64(self.capacity.memory_bytes);
        buf.put_u32(self.load.instances);
        buf.put_f32(self.load.request_rate);
        buf.put_f32(self.load.cpu_percent);
        buf.put_u8(self.labels.len() as u8);
        for (k, v) in &self.labels {
            wire::put_str(buf, k);
            wire::put_str(buf, v);
        }
    }

    pub(crate) fn decode(buf: &mut impl Buf) -> Result<Self, DecodeError> {
        let region = wire::get_str(buf, "region", MAX_SHORT_STR)?;
        let version = wire::get_str(buf, "version", MAX_SHORT_STR)?;
        let http_addr = match wire::get_u8(buf)? {
            0 => None,
            1 => Some(wire::get_addr(buf)?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "http address",
                    tag,
                });
            }
        };
        let capacity = Capacity {
            cores: wire::get_u32(buf)?,
            memory_bytes: wire::get_u64(buf)?,
        };
        let load = Load {
            instances: wire::get_u32(buf)?,
            request_rate: wire::get_f32(buf)?,
            cpu_percent: wire::get_f32(buf)?,
        };
        let n = usize::from(wire::get_u8(buf)?);
        if n > MAX_LABELS {
            return Err(DecodeError::TooLong {
                what: "labels",
                len: n,
                max: MAX_LABELS,
            });
        }
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let k = wire::get_str(buf, "label key", MAX_SHORT_STR)?;
            let v = wire::get_str(buf, "label value", MAX_LABEL_VALUE)?;
            labels.push((k, v));
        }
        let md = Self {
            region,
            labels,
            capacity,
            load,
            http_addr,
            version,
        };
        md.validate()
            .map_err(|_| DecodeError::Invalid("metadata"))?;
        Ok(md)
    }
}

/// A custom broadcast item carried by foca.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Item {
    /// A node's metadata and coordinate at a version.
    Meta(Box<MetaRecord>),
    /// A node leaves gracefully.
    Leave(Identity),
}

/// A node's metadata as known by others.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaRecord {
    /// Whose.
    pub identity: Identity,
    /// `(bump << 32) | sequence`: higher wins, a restarted node's records win over old ones.
    pub version: u64,
    /// The node's coordinate when it published this record.
    pub coordinate: Coordinate,
    /// The metadata.
    pub metadata: Metadata,
}

const ITEM_META: u8 = 1;
const ITEM_LEAVE: u8 = 2;

impl Item {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        match self {
            Item::Meta(r) => {
                buf.put_u8(ITEM_META);
                wire::put_identity(&mut buf, &r.identity);
                buf.put_u64(r.version);
                wire::put_coord(&mut buf, &r.coordinate);
                r.metadata.encode(&mut buf);
            }
            Item::Leave(id) => {
                buf.put_u8(ITEM_LEAVE);
                wire::put_identity(&mut buf, id);
            }
        }
        buf
    }

    pub(crate) fn decode(mut data: &[u8]) -> Result<Self, DecodeError> {
        let buf = &mut data;
        let item = match wire::get_u8(buf)? {
            ITEM_META => Item::Meta(Box::new(MetaRecord {
                identity: wire::get_identity(buf)?,
                version: wire::get_u64(buf)?,
                coordinate: wire::get_coord(buf)?,
                metadata: Metadata::decode(buf)?,
            })),
            ITEM_LEAVE => Item::Leave(wire::get_identity(buf)?),
            tag => return Err(DecodeError::UnknownTag { what: "item", tag }),
        };
        if !data.is_empty() {
            return Err(DecodeError::Trailing(data.len()));
        }
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        Metadata {
            region: "eu-west".into(),
            labels: vec![("disk".into(), "ssd".into()), ("gpu".into(), "no".into())],
            capacity: Capacity {
                cores: 8,
                memory_bytes: 16 << 30,
            },
            load: Load {
                instances: 3,
                request_rate: 120.5,
                cpu_percent: 40.0,
            },
            http_addr: Some("127.0.0.1:8080".parse().unwrap()),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn round_trip_and_len() {
        let md = sample();
        let mut buf = Vec::new();
        md.encode(&mut buf);
        assert_eq!(buf.len(), md.encoded_len());
        assert_eq!(md.validate().unwrap(), buf.len());
        assert_eq!(Metadata::decode(&mut &buf[..]).unwrap(), md);
    }

    #[test]
    fn bounds_have_clear_errors() {
        let mut md = sample();
        md.labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(matches!(
            md.validate(),
            Err(MetadataError::TooManyLabels { count, .. }) if count == MAX_LABELS + 1
        ));
        md.labels = (0..16)
            .map(|i| (format!("k{i}"), "v".repeat(100)))
            .collect();
        let err = md.validate().unwrap_err();
        assert!(matches!(err, MetadataError::TooLarge { max: 1024, .. }));
        assert!(err.to_string().contains("1024-byte limit"));
        md.labels.clear();
        md.region = "r".repeat(65);
        assert!(matches!(
            md.validate(),
            Err(MetadataError::FieldTooLong {
                field: "region",
                ..
            })
        ));
        md.region.clear();
        md.load.cpu_percent = f32::NAN;
        assert!(md.validate().is_err());
    }

    #[test]
    fn truncations_are_errors() {
        let mut buf = Vec::new();
        sample().encode(&mut buf);
        for n in 0..buf.len() {
            assert!(Metadata::decode(&mut &buf[..n]).is_err(), "prefix {n}");
        }
    }
}
