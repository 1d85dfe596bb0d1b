//! Borrowed view of little-endian u32 words (feature blocks).

use core::iter::FusedIterator;
use core::slice::ChunksExact;

/// A view of little-endian u32 words inside a frame (feature blocks).
///
/// Feature blocks are left in the frame instead of being copied out so that
/// decoding needs no allocation and no fixed upper bound on the block count.
/// The wrapped byte slice always has a length that is a multiple of 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Le32s<'a>(&'a [u8]);

impl<'a> Le32s<'a> {
    /// No words at all.
    pub const EMPTY: Le32s<'static> = Le32s(&[]);

    /// Wrap `bytes`; `None` unless its length is a multiple of 4.
    pub const fn new(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() % 4 == 0 {
            Some(Self(bytes))
        } else {
            None
        }
    }

    /// Wrap `bytes` minus any trailing partial word (crate-internal: the
    /// decoder only hands in lengths it computed as `4 * n`).
    pub(crate) fn from_words(bytes: &'a [u8]) -> Self {
        let whole = bytes.len() - bytes.len() % 4;
        Self(bytes.get(..whole).unwrap_or(&[]))
    }

    /// Number of u32 words.
    pub const fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// True if there are no words.
    pub const fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Word `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<u32> {
        let start = i.checked_mul(4)?;
        let word = self.0.get(start..)?.first_chunk::<4>()?;
        Some(u32::from_le_bytes(*word))
    }

    /// Iterate over the words in order.
    pub fn iter(&self) -> Le32Iter<'a> {
        Le32Iter(self.0.chunks_exact(4))
    }

    /// The raw little-endian bytes (length `4 * len()`).
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.0
    }
}

impl<'a> IntoIterator for Le32s<'a> {
    type Item = u32;
    type IntoIter = Le32Iter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over the words of an [`Le32s`].
#[derive(Clone, Debug)]
pub struct Le32Iter<'a>(ChunksExact<'a, u8>);

fn word(chunk: &[u8]) -> u32 {
    chunk
        .first_chunk::<4>()
        .map_or(0, |w| u32::from_le_bytes(*w))
}

impl Iterator for Le32Iter<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        self.0.next().map(word)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl DoubleEndedIterator for Le32Iter<'_> {
    fn next_back(&mut self) -> Option<u32> {
        self.0.next_back().map(word)
    }
}

impl ExactSizeIterator for Le32Iter<'_> {}
impl FusedIterator for Le32Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        let b = [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        let w = Le32s::new(&b).expect("multiple of 4");
        assert_eq!(w.len(), 2);
        assert_eq!(w.get(0), Some(1));
        assert_eq!(w.get(1), Some(u32::MAX));
        assert_eq!(w.get(2), None);
        assert_eq!(w.get(usize::MAX), None);
        let mut it = w.iter();
        assert_eq!(it.len(), 2);
        assert_eq!(it.next(), Some(1));
        assert_eq!(it.next_back(), Some(u32::MAX));
        assert_eq!(it.next(), None);
        assert_eq!(w.as_bytes(), &b);
        assert!(Le32s::new(&b[..3]).is_none());
        assert!(Le32s::EMPTY.is_empty());
        assert_eq!(Le32s::default(), Le32s::EMPTY);
        assert_eq!(Le32s::from_words(&b[..7]).len(), 1);
    }
}
