//! NAT traversal for the lattice (DESIGN's second law: a laptop behind NAT is a peer like any
//! other), written sans-IO: the cores here are fed with reports and time and say what to
//! advertise and whom to ask; `aether-mesh`'s driver does the sending and the dialling.
//!
//! - [`reachability`]: how the lattice reaches this node, learned from members'
//!   observed-address reports and dial-backs, advertised as labels.
//! - [`relay`]: the envelope a relay passes datagrams in, and its budget per pair.

pub mod reachability;
pub mod relay;

pub use reachability::{OBSERVED_LABEL, REACHABILITY_LABEL, Reach, Reachability};
