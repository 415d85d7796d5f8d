//! A cursor over a prefix of the file that checks every read against three ends, in this order: the file's end
//! (the file is malformed), the header limit (the header is too large to accept), and the prefix's end (the
//! caller must read more: [`GgufError::NeedMore`]).

use super::GgufError;

/// Reads little-endian values from a prefix of a file of known length.
pub(crate) struct Reader<'a> {
    prefix: &'a [u8],
    position: u64,
    file_bytes: u64,
    header_bytes_max: u64,
}

impl<'a> Reader<'a> {
    /// A reader at byte 0 of a file `file_bytes` long whose first bytes are `prefix`.
    pub(crate) fn new(prefix: &'a [u8], file_bytes: u64, header_bytes_max: u64) -> Self {
        assert!(prefix.len() as u64 <= file_bytes, "a prefix of the file");
        Reader {
            prefix,
            position: 0,
            file_bytes,
            header_bytes_max,
        }
    }

    /// Where the next read starts.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Bytes from here to the nearer of the file's end and the header limit: what any count must fit in.
    pub(crate) fn remaining(&self) -> u64 {
        self.file_bytes
            .min(self.header_bytes_max)
            .saturating_sub(self.position)
    }

    /// The next `length` bytes.
    pub(crate) fn bytes(&mut self, length: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        let start = self.position;
        let end = start.checked_add(length).ok_or(GgufError::Truncated {
            what,
            offset: start,
        })?;
        if end > self.file_bytes {
            return Err(GgufError::Truncated {
                what,
                offset: start,
            });
        }
        if end > self.header_bytes_max {
            return Err(GgufError::HeaderTooLarge {
                limit_bytes: self.header_bytes_max,
            });
        }
        if end > self.prefix.len() as u64 {
            return Err(GgufError::NeedMore {
                bytes_at_least: end,
            });
        }
        self.position = end;
        // Both ends are within the prefix, whose length is a usize.
        Ok(&self.prefix[start as usize..end as usize])
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], GgufError> {
        let bytes = self.bytes(N as u64, what)?;
        Ok(bytes.try_into().expect("bytes() returns exactly N bytes"))
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A GGUF string's bytes: a `u64` length, at most `limit` (named `limit_name`), then that many bytes.
    pub(crate) fn string(
        &mut self,
        what: &'static str,
        limit_name: &'static str,
        limit: u64,
    ) -> Result<&'a [u8], GgufError> {
        let length = self.u64(what)?;
        self.check_count(length, 1, "string length")?;
        if length > limit {
            return Err(GgufError::LimitExceeded {
                what: limit_name,
                value: length,
                limit,
            });
        }
        self.bytes(length, what)
    }

    /// Refuses `count` items of at least `min_item_bytes` each when they cannot fit in what is left, before the
    /// caller loops or allocates for them.
    pub(crate) fn check_count(
        &self,
        count: u64,
        min_item_bytes: u64,
        what: &'static str,
    ) -> Result<(), GgufError> {
        assert!(min_item_bytes >= 1);
        let needed = count.checked_mul(min_item_bytes);
        let file_remaining = self.file_bytes.saturating_sub(self.position);
        if needed.is_none_or(|needed| needed > file_remaining) {
            return Err(GgufError::CountPastEnd {
                what,
                count,
                remaining_bytes: file_remaining,
            });
        }
        if needed.is_none_or(|needed| needed > self.remaining()) {
            return Err(GgufError::HeaderTooLarge {
                limit_bytes: self.header_bytes_max,
            });
        }
        Ok(())
    }
}
