//! Record versions: a PostgreSQL LSN plus an ordinal. Versions order every
//! change of a row, which is what makes apply idempotent and order-free.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL log sequence number (`X/Y` in hex).
///
/// Kept below 2^63 so it fits the `bigint` bookkeeping columns; a real LSN
/// reaches that after 8 EiB of WAL, so a larger one is malformed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed lsn {input:?}: {reason}")]
pub struct LsnError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| LsnError {
            input: s.chars().take(64).collect(),
            reason,
        };
        let (hi, lo) = s.split_once('/').ok_or_else(|| err("expected X/Y"))?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                Err(err("each half must be 1 to 8 hex digits"))
            } else {
                u32::from_str_radix(p, 16).map_err(|_| err("not hex"))
            }
        };
        let value = (u64::from(part(hi)?) << 32) | u64::from(part(lo)?);
        if value > i64::MAX as u64 {
            return Err(err("beyond 2^63"));
        }
        Ok(Lsn(value))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The version of one change: commit LSN, then the change's ordinal inside
/// its transaction (or its line in a file that carries no ordinal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    pub lsn: Lsn,
    pub seq: u64,
}

impl Version {
    pub const ZERO: Version = Version {
        lsn: Lsn(0),
        seq: 0,
    };

    pub fn new(lsn: Lsn, seq: u64) -> Self {
        Version { lsn, seq }
    }

    /// The pair as stored in `bigint` columns. Both halves are below 2^63 by
    /// construction (LSNs are checked at parse, ordinals at record validation).
    pub fn to_db(self) -> (i64, i64) {
        (self.lsn.0 as i64, self.seq as i64)
    }

    pub fn from_db(lsn: i64, seq: i64) -> Self {
        Version {
            lsn: Lsn(lsn as u64),
            seq: seq as u64,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.lsn, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_lsn() {
        let lsn: Lsn = "0/16B3D50".parse().unwrap();
        assert_eq!(lsn.0, 0x16B3D50);
        assert_eq!(lsn.to_string(), "0/16B3D50");
        let high: Lsn = "1A/0000000F".parse().unwrap();
        assert_eq!(high.0, (0x1A << 32) | 0xF);
        assert_eq!(high.to_string(), "1A/F");
    }

    #[test]
    fn rejects_malformed_lsn() {
        for bad in [
            "",
            "16B3D50",
            "0/",
            "/1",
            "0/G",
            "0/123456789",
            "-1/2",
            "0/1/2",
            "FFFFFFFF/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn versions_order_by_lsn_then_seq() {
        let a = Version::new(Lsn(5), 9);
        let b = Version::new(Lsn(6), 0);
        let c = Version::new(Lsn(6), 1);
        assert!(a < b && b < c);
        assert_eq!(Version::from_db(c.to_db().0, c.to_db().1), c);
    }
}
