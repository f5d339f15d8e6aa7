//! A writer for newc ("070701") cpio archives, the format Linux unpacks as an initramfs.
//!
//! Output is reproducible by construction: entries are sorted by path, parents are created
//! implicitly, owners are 0:0, mtimes 0, inode numbers assigned in order. That is what makes two
//! builds of the same image give the same digest.

use std::collections::BTreeMap;

/// Errors adding entries.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("archive path {0:?} must be absolute, normalised and not the root")]
    BadPath(String),
    #[error("archive path {0} was added twice")]
    Duplicate(String),
    #[error("archive path {0} is under {1}, which is not a directory")]
    NotADirectory(String, String),
    #[error("archive entry {0} is larger than newc's 4 GiB limit")]
    TooLarge(String),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const PERM_MASK: u32 = 0o7777;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// An archive being assembled; paths are absolute (`/init`), stored without the leading `/`.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

fn normalise(path: &str) -> Result<String, CpioError> {
    let bad = || CpioError::BadPath(path.to_owned());
    let rel = path.strip_prefix('/').ok_or_else(bad)?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(rel.to_owned())
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let rel = normalise(path)?;
        let mut parent = String::new();
        for component in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            match self.entries.get(&parent) {
                None => {
                    self.entries
                        .insert(parent.clone(), Entry::Dir { mode: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(_) => return Err(CpioError::NotADirectory(rel, parent)),
            }
        }
        match self.entries.get(&rel) {
            // Directories may be declared after being created implicitly as a parent.
            Some(Entry::Dir { .. }) if matches!(entry, Entry::Dir { .. }) => {}
            Some(_) => return Err(CpioError::Duplicate(rel)),
            None => {}
        }
        self.entries.insert(rel, entry);
        Ok(())
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), CpioError> {
        self.add(
            path,
            Entry::Dir {
                mode: mode & PERM_MASK,
            },
        )
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(path.to_owned()));
        }
        self.add(
            path,
            Entry::File {
                mode: mode & PERM_MASK,
                data,
            },
        )
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.add(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds a character device node.
    pub fn char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.add(
            path,
            Entry::CharDev {
                mode: mode & PERM_MASK,
                major,
                minor,
            },
        )
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The archive bytes, ending with the `TRAILER!!!` entry and padded to 4 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, data, (0, 0)),
                Entry::Symlink { target } => (S_IFLNK | 0o777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (S_IFCHR | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir { .. }) {
                2
            } else {
                1
            };
            write_entry(&mut out, name, ino as u32 + 1, mode, nlink, data, rdev);
        }
        write_entry(&mut out, "TRAILER!!!", 0, 0, 1, &[], (0, 0));
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn write_entry(
    out: &mut Vec<u8>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    data: &[u8],
    rdev: (u32, u32),
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal reader for the tests: (name, mode, data, rdevmajor, rdevminor).
    fn read(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>, u32, u32)> {
        let mut out = Vec::new();
        let mut off = 0;
        loop {
            assert_eq!(&bytes[off..off + 6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&bytes[off + 6 + i * 8..off + 14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let (major, minor) = (field(9), field(10));
            let name_start = off + 110;
            let name = std::str::from_utf8(&bytes[name_start..name_start + namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data = bytes[data_start..data_start + size].to_vec();
            off = (data_start + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(off, bytes.len());
                return out;
            }
            out.push((name, mode, data, major, minor));
        }
    }

    #[test]
    fn entries_come_out_sorted_with_implicit_parents() {
        let mut a = Archive::new();
        a.file("/herd/image.json", 0o644, b"{}".to_vec()).unwrap();
        a.file("/init", 0o755, b"\x7fELF".to_vec()).unwrap();
        a.char_dev("/dev/console", 0o600, 5, 1).unwrap();
        a.symlink("/lib64", "lib").unwrap();
        let entries = read(&a.to_bytes());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "herd",
                "herd/image.json",
                "init",
                "lib64"
            ]
        );
        assert_eq!(entries[0].1, S_IFDIR | 0o755);
        assert_eq!(
            (entries[1].1, entries[1].3, entries[1].4),
            (S_IFCHR | 0o600, 5, 1)
        );
        assert_eq!(
            (entries[4].1, entries[4].2.as_slice()),
            (S_IFREG | 0o755, &b"\x7fELF"[..])
        );
        assert_eq!(
            (entries[5].1, entries[5].2.as_slice()),
            (S_IFLNK | 0o777, &b"lib"[..])
        );
    }

    #[test]
    fn same_entries_in_any_order_give_identical_bytes() {
        let mut a = Archive::new();
        a.file("/b", 0o644, vec![1]).unwrap();
        a.file("/a/x", 0o600, vec![2, 3]).unwrap();
        let mut b = Archive::new();
        b.file("/a/x", 0o600, vec![2, 3]).unwrap();
        b.file("/b", 0o644, vec![1]).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.to_bytes().len() % 4, 0);
    }

    #[test]
    fn bad_duplicate_and_conflicting_paths_are_refused() {
        let mut a = Archive::new();
        for bad in ["", "/", "rel", "/a//b", "/a/../b", "/a/./b", "/a/"] {
            assert!(
                matches!(a.file(bad, 0o644, vec![]), Err(CpioError::BadPath(_))),
                "{bad}"
            );
        }
        a.file("/f", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.file("/f", 0o644, vec![]),
            Err(CpioError::Duplicate(_))
        ));
        assert!(matches!(
            a.file("/f/g", 0o644, vec![]),
            Err(CpioError::NotADirectory(..))
        ));
        a.file("/d/x", 0o644, vec![]).unwrap();
        a.dir("/d", 0o700).unwrap();
        assert!(a.contains("/d") && a.contains("/d/x") && !a.contains("/nope"));
    }
}
