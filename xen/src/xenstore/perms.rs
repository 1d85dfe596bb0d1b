//! Node permissions: the owner entry first (owner domain + access for
//! domains not listed), then per-domain entries; on the wire one string per
//! entry, an access letter and a domid (`"n0"`, `"r5"`, `"b7"`).

use std::fmt;

use crate::DomId;
use crate::xenstore::wire::WireError;

/// Access granted to a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `n`: none.
    None,
    /// `r`: read.
    Read,
    /// `w`: write.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            Self::None => 'n',
            Self::Read => 'r',
            Self::Write => 'w',
            Self::Both => 'b',
        }
    }

    /// Parse a wire letter.
    pub fn from_letter(c: char) -> Option<Self> {
        match c {
            'n' => Some(Self::None),
            'r' => Some(Self::Read),
            'w' => Some(Self::Write),
            'b' => Some(Self::Both),
            _ => None,
        }
    }

    /// Whether reading is allowed.
    pub fn can_read(self) -> bool {
        matches!(self, Self::Read | Self::Both)
    }

    /// Whether writing is allowed.
    pub fn can_write(self) -> bool {
        matches!(self, Self::Write | Self::Both)
    }
}

/// One permission entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Perm {
    /// The domain.
    pub domid: DomId,
    /// What it may do.
    pub access: Access,
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

impl Perm {
    /// Parse one wire entry (`"r5"`).
    pub fn parse(s: &str) -> Result<Self, WireError> {
        let mut chars = s.chars();
        let access = chars
            .next()
            .and_then(Access::from_letter)
            .ok_or(WireError::Malformed("permission letter not one of n/r/w/b"))?;
        let id = chars.as_str();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WireError::Malformed("permission domid not decimal"));
        }
        let domid = id
            .parse::<DomId>()
            .map_err(|_| WireError::Malformed("permission domid out of range"))?;
        Ok(Self { domid, access })
    }
}

/// The permissions of a node. Never empty: the first entry names the owner
/// and the access of every domain not listed after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permissions {
    entries: Vec<Perm>,
}

impl Permissions {
    /// Owned by `owner`; other domains get `others`.
    pub fn new(owner: DomId, others: Access) -> Self {
        Self {
            entries: vec![Perm {
                domid: owner,
                access: others,
            }],
        }
    }

    /// Add (or replace) the entry of `domid`.
    #[must_use]
    pub fn with(mut self, domid: DomId, access: Access) -> Self {
        if let Some(e) = self.entries[1..].iter_mut().find(|e| e.domid == domid) {
            e.access = access;
        } else {
            self.entries.push(Perm { domid, access });
        }
        self
    }

    /// The owner domain: full access to the node.
    pub fn owner(&self) -> DomId {
        self.entries[0].domid
    }

    /// The access of domains without an entry.
    pub fn others(&self) -> Access {
        self.entries[0].access
    }

    /// The per-domain entries after the owner entry.
    pub fn acl(&self) -> &[Perm] {
        &self.entries[1..]
    }

    /// All entries, owner first (the wire order).
    pub fn entries(&self) -> &[Perm] {
        &self.entries
    }

    /// The access of an unprivileged `domid`, as xenstored decides it: the
    /// owner has all rights; else the first entry naming it; else `others`.
    /// (Privileged domains bypass this.)
    pub fn access_for(&self, domid: DomId) -> Access {
        if domid == self.owner() {
            return Access::Both;
        }
        self.acl()
            .iter()
            .find(|e| e.domid == domid)
            .map_or(self.others(), |e| e.access)
    }

    /// Parse the wire strings of a `GET_PERMS` reply.
    pub fn parse<'a>(strings: impl IntoIterator<Item = &'a str>) -> Result<Self, WireError> {
        let entries = strings
            .into_iter()
            .map(Perm::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            return Err(WireError::Malformed("empty permission list"));
        }
        Ok(Self { entries })
    }

    /// The wire form: one NUL-terminated string per entry.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            out.extend_from_slice(e.to_string().as_bytes());
            out.push(0);
        }
        out
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let p = Permissions::parse(["n0", "r5", "b7"]).unwrap();
        assert_eq!(p.owner(), 0);
        assert_eq!(p.others(), Access::None);
        assert_eq!(
            p.acl(),
            [
                Perm {
                    domid: 5,
                    access: Access::Read
                },
                Perm {
                    domid: 7,
                    access: Access::Both
                }
            ]
        );
        assert_eq!(p.to_wire(), b"n0\0r5\0b7\0");
        assert_eq!(p.to_string(), "n0 r5 b7");
        assert_eq!(
            Permissions::new(3, Access::Read).with(4, Access::Write),
            Permissions::parse(["r3", "w4"]).unwrap()
        );
    }

    #[test]
    fn malformed_entries_are_rejected() {
        for bad in ["", "x1", "r", "r-1", "r1a", "r65536", "R1"] {
            assert!(Perm::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Permissions::parse([]).is_err());
        assert_eq!(Perm::parse("b65535").unwrap().domid, 65535);
    }

    #[test]
    fn access_rules() {
        let p = Permissions::new(5, Access::Read)
            .with(6, Access::None)
            .with(7, Access::Write);
        assert_eq!(p.access_for(5), Access::Both, "owner");
        assert_eq!(
            p.access_for(6),
            Access::None,
            "explicit entry wins over others"
        );
        assert_eq!(p.access_for(7), Access::Write);
        assert_eq!(p.access_for(8), Access::Read, "others");
        // Replacing an entry keeps one entry per domain.
        assert_eq!(p.clone().with(6, Access::Both).acl().len(), 2);
    }
}
