//! Walks the newc ("070701") cpio archives in an initrd, several of them concatenated as herd
//! run appends an instance's configuration archive to an image's initramfs, so the probe can
//! report which `herd/` files a guest would see and what they hold.

use crate::bytes::byte_sum;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &[u8] = b"TRAILER!!!";
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;

/// One regular file found in the archives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEntry<'a> {
    pub name: &'a [u8],
    pub data: &'a [u8],
}

impl FileEntry<'_> {
    /// Wrapping 32-bit sum of the file's bytes.
    pub fn sum(&self) -> u32 {
        byte_sum(self.data)
    }
}

fn hex_field(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0u32, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some((acc << 4) | u32::from(d))
    })
}

/// Iterator over the regular files of every archive in `initrd`, in archive order. It stops
/// at the first malformed header (a guest kernel would stop there too).
#[derive(Debug)]
pub struct Files<'a> {
    data: &'a [u8],
    off: usize,
}

/// Files in `initrd`.
pub fn files(initrd: &[u8]) -> Files<'_> {
    Files {
        data: initrd,
        off: 0,
    }
}

impl<'a> Files<'a> {
    /// Skips the zero padding between concatenated archives.
    fn skip_padding(&mut self) {
        while self.off < self.data.len() && self.data[self.off] == 0 {
            self.off += 1;
        }
    }

    /// Parses the entry at `off`: (name, mode, data), advancing past it.
    fn entry(&mut self) -> Option<(&'a [u8], u32, &'a [u8])> {
        let d = self.data;
        let h = d.get(self.off..self.off + HEADER_LEN)?;
        if &h[..6] != MAGIC {
            return None;
        }
        let field = |i: usize| hex_field(&h[6 + i * 8..14 + i * 8]);
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name_start = self.off + HEADER_LEN;
        let name = d.get(name_start..name_start + namesize.checked_sub(1)?)?;
        let data_start = (name_start + namesize).next_multiple_of(4);
        let data = d.get(data_start..data_start + size)?;
        self.off = (data_start + size).next_multiple_of(4);
        Some((name, mode, data))
    }
}

impl<'a> Iterator for Files<'a> {
    type Item = FileEntry<'a>;

    fn next(&mut self) -> Option<FileEntry<'a>> {
        loop {
            self.skip_padding();
            let (name, mode, data) = self.entry()?;
            if name == TRAILER {
                continue;
            }
            if mode & S_IFMT == S_IFREG {
                return Some(FileEntry { name, data });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn entry(out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]) {
        let fields = [
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(MAGIC);
        for f in fields {
            out.extend_from_slice(std::format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    fn archive(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, m, d) in files {
            entry(&mut out, n, *m, d);
        }
        entry(&mut out, "TRAILER!!!", 0, &[]);
        out
    }

    #[test]
    fn regular_files_of_concatenated_archives_in_order() {
        let mut initrd = archive(&[
            ("herd", 0o40755, b""),
            ("herd/image.json", 0o100644, b"{}"),
            ("init", 0o100755, b"x"),
        ]);
        initrd.extend_from_slice(&[0; 8]);
        initrd.extend(archive(&[("herd/instance.json", 0o100644, b"{\"a\":1}")]));
        let found: Vec<(&[u8], &[u8])> = files(&initrd).map(|f| (f.name, f.data)).collect();
        assert_eq!(
            found,
            [
                (&b"herd/image.json"[..], &b"{}"[..]),
                (b"init", b"x"),
                (b"herd/instance.json", b"{\"a\":1}")
            ]
        );
    }

    #[test]
    fn garbage_or_truncation_ends_the_walk() {
        assert_eq!(files(b"not an archive").count(), 0);
        let a = archive(&[("f", 0o100644, b"hello")]);
        assert_eq!(files(&a[..a.len() - 130]).count(), 0);
        assert_eq!(files(&a).next().unwrap().sum(), byte_sum(b"hello"));
    }
}
