//! The file tree of an image's initramfs while `herd build` stages it, before it becomes a
//! newc archive (`crate::cpio`).
//!
//! Unlike the archive writer, the tree knows symlinks: a file added under a directory that is a
//! symlink in the tree (`/lib` -> `usr/lib`) lands where the link points, as it would on the
//! guest's filesystem. Path resolution itself ([`walk`]) is shared with the host-side lookups of
//! `elf`, so the image and the host agree on what a path means.

use std::collections::BTreeMap;

use crate::cpio::{Archive, CpioError};

/// Most symlinks followed resolving one path (Linux's limit).
pub const MAX_SYMLINKS: usize = 40;

/// Errors staging the tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("image path {0:?} is not an absolute path")]
    Relative(String),
    #[error("image path {0} is reached through {1}, which is not a directory")]
    NotADirectory(String, String),
    #[error("image path {path} would replace the {existing} already there")]
    Conflict {
        path: String,
        existing: &'static str,
    },
    #[error("too many levels of symbolic links resolving {0}")]
    Loop(String),
    #[error("writing the initramfs archive")]
    Cpio(#[source] CpioError),
}

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Dir { .. } => "directory",
            Node::File { .. } => "file",
            Node::Symlink { .. } => "symlink",
            Node::CharDev { .. } => "device node",
        }
    }
}

/// What a path component is, as seen by [`walk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Dir,
    Other,
    Symlink(String),
}

/// A path resolved by [`walk`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    /// The resolved absolute path, normalised (no `.`, `..` or symlinks but maybe the last).
    pub real: String,
    /// Each symlink passed through: (its own path, its target as stored).
    pub links: Vec<(String, String)>,
    /// Whether a directory on the way was missing (the path cannot exist as given).
    pub missing_parent: bool,
}

fn join(dir: &[String], name: &str) -> String {
    let mut out = String::new();
    for c in dir.iter().map(String::as_str).chain([name]) {
        out.push('/');
        out.push_str(c);
    }
    out
}

/// Resolves absolute `path` as Linux would, asking `kind` what each prefix is. Symlinks are
/// followed everywhere except the last component unless `follow_last`; `..` climbs the
/// resolved directory, never above the root.
pub fn walk(
    path: &str,
    follow_last: bool,
    kind: impl Fn(&str) -> Kind,
) -> Result<Walked, TreeError> {
    if !path.starts_with('/') {
        return Err(TreeError::Relative(path.to_owned()));
    }
    let mut todo: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut done: Vec<String> = Vec::new();
    let mut out = Walked::default();
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = join(&done, &c);
        let last = todo.iter().all(|t| t.is_empty() || t == ".");
        match kind(&here) {
            Kind::Symlink(target) if follow_last || !last => {
                if out.links.len() == MAX_SYMLINKS {
                    return Err(TreeError::Loop(path.to_owned()));
                }
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_owned));
                out.links.push((here, target));
            }
            Kind::Other if !last => return Err(TreeError::NotADirectory(path.to_owned(), here)),
            Kind::Missing if !last => {
                out.missing_parent = true;
                done.push(c);
            }
            _ => done.push(c),
        }
    }
    out.real = if done.is_empty() {
        "/".to_owned()
    } else {
        join(&done[..done.len() - 1], &done[done.len() - 1])
    };
    Ok(out)
}

/// The staged file tree. Paths are absolute; the root itself is implicit.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    fn kind(&self, path: &str) -> Kind {
        match self.nodes.get(path) {
            None => Kind::Missing,
            Some(Node::Dir { .. }) => Kind::Dir,
            Some(Node::Symlink { target }) => Kind::Symlink(target.clone()),
            Some(_) => Kind::Other,
        }
    }

    /// Resolves `path` through the tree's symlinks; the last component is not followed.
    fn place(&mut self, path: &str) -> Result<String, TreeError> {
        let walked = walk(path, false, |p| self.kind(p))?;
        if walked.real == "/" {
            return Err(TreeError::Conflict {
                path: path.to_owned(),
                existing: "root directory",
            });
        }
        let parent_end = walked.real.rfind('/').unwrap_or(0);
        let mut prefix = String::new();
        for c in walked.real[..parent_end]
            .split('/')
            .filter(|c| !c.is_empty())
        {
            prefix.push('/');
            prefix.push_str(c);
            self.nodes
                .entry(prefix.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        Ok(walked.real)
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        let real = self.place(path)?;
        match self.nodes.get(&real) {
            Some(existing) if *existing == node => Ok(()),
            Some(existing) => Err(TreeError::Conflict {
                path: path.to_owned(),
                existing: existing.kind(),
            }),
            None => {
                self.nodes.insert(real, node);
                Ok(())
            }
        }
    }

    /// Adds a directory with `mode`, or sets the mode of the directory already there.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        let real = self.place(path)?;
        match self.nodes.get_mut(&real) {
            Some(Node::Dir { mode: m }) => *m = mode & 0o777,
            Some(other) => {
                return Err(TreeError::Conflict {
                    path: path.to_owned(),
                    existing: other.kind(),
                });
            }
            None => {
                self.nodes.insert(real, Node::Dir { mode: mode & 0o777 });
            }
        }
        Ok(())
    }

    /// Adds a directory with mode 0755 unless `path` already resolves to a directory.
    pub fn ensure_dir(&mut self, path: &str) -> Result<(), TreeError> {
        match self.lookup(path)? {
            Some(Node::Dir { .. }) => Ok(()),
            _ => self.insert(path, Node::Dir { mode: 0o755 }),
        }
    }

    /// Adds a regular file (rwx permission bits kept). Adding the same file twice is fine.
    pub fn add_file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> Result<(), TreeError> {
        self.insert(
            path,
            Node::File {
                mode: mode & 0o777,
                data,
            },
        )
    }

    /// Adds a symlink. Adding the same link twice is fine.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), TreeError> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
            },
        )
    }

    /// Adds a symlink unless something is already at `path`; says whether it was added.
    pub fn add_symlink_if_absent(&mut self, path: &str, target: &str) -> Result<bool, TreeError> {
        let real = walk(path, false, |p| self.kind(p))?.real;
        if self.nodes.contains_key(&real) {
            return Ok(false);
        }
        self.add_symlink(path, target).map(|()| true)
    }

    /// Adds a character device node.
    pub fn add_char_dev(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), TreeError> {
        self.insert(
            path,
            Node::CharDev {
                mode: mode & 0o777,
                major,
                minor,
            },
        )
    }

    /// What `path` resolves to, following every symlink; `None` when nothing is there.
    pub fn lookup(&self, path: &str) -> Result<Option<&Node>, TreeError> {
        let walked = walk(path, true, |p| self.kind(p))?;
        if walked.missing_parent {
            return Ok(None);
        }
        Ok(self.nodes.get(&walked.real))
    }

    /// Number of entries (directories included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The tree's entries by absolute path, sorted (implicit parents are not listed).
    pub fn into_nodes(self) -> BTreeMap<String, Node> {
        self.nodes
    }

    /// The tree as a reproducible newc archive (consumed: file data moves, not copies).
    pub fn into_cpio(self) -> Result<Vec<u8>, TreeError> {
        let mut archive = Archive::new();
        for (path, node) in self.nodes {
            match node {
                Node::Dir { mode } => archive.dir(&path, mode),
                Node::File { mode, data } => archive.file(&path, mode, data),
                Node::Symlink { target } => archive.symlink(&path, &target),
                Node::CharDev { mode, major, minor } => archive.char_dev(&path, mode, major, minor),
            }
            .map_err(TreeError::Cpio)?;
        }
        Ok(archive.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_follows_relative_and_absolute_links_and_dotdot() {
        let links: BTreeMap<&str, &str> = [
            ("/lib", "usr/lib"),
            ("/lib64", "/usr/lib64"),
            ("/usr/lib64/ld.so", "../lib/x/ld.so"),
        ]
        .into();
        let kind = |p: &str| match links.get(p) {
            Some(t) => Kind::Symlink((*t).to_owned()),
            None if p.ends_with(".so") => Kind::Other,
            None => Kind::Dir,
        };
        let w = walk("/lib64/ld.so", true, kind).unwrap();
        assert_eq!(w.real, "/usr/lib/x/ld.so");
        assert_eq!(
            w.links,
            [
                ("/lib64".into(), "/usr/lib64".into()),
                ("/usr/lib64/ld.so".into(), "../lib/x/ld.so".into())
            ]
        );
        let w = walk("/lib64/ld.so", false, kind).unwrap();
        assert_eq!(w.real, "/usr/lib64/ld.so");
        assert_eq!(walk("/a/./b/../../../c", true, kind).unwrap().real, "/c");
        assert_eq!(walk("/", true, kind).unwrap().real, "/");
        assert!(matches!(
            walk("rel", true, kind),
            Err(TreeError::Relative(_))
        ));
        assert!(matches!(
            walk("/x.so/y", true, kind),
            Err(TreeError::NotADirectory(..))
        ));
        let looping = |p: &str| {
            if p == "/a" {
                Kind::Symlink("a".into())
            } else {
                Kind::Dir
            }
        };
        assert!(matches!(
            walk("/a/b", true, looping),
            Err(TreeError::Loop(_))
        ));
    }

    #[test]
    fn files_land_where_symlinked_directories_point() {
        let mut t = Tree::new();
        t.add_symlink("/lib", "usr/lib").unwrap();
        t.add_file("/lib/x/libc.so.6", 0o100755, vec![1]).unwrap();
        assert_eq!(
            t.lookup("/usr/lib/x/libc.so.6").unwrap(),
            Some(&Node::File {
                mode: 0o755,
                data: vec![1]
            })
        );
        assert!(t.lookup("/lib/x/libc.so.6").unwrap().is_some());
        assert!(t.lookup("/nope/x").unwrap().is_none());
        t.add_file("/usr/lib/x/libc.so.6", 0o755, vec![1]).unwrap();
        let err = t.add_file("/lib/x/libc.so.6", 0o755, vec![2]).unwrap_err();
        assert!(err.to_string().contains("would replace the file"), "{err}");
        assert!(matches!(
            t.add_dir("/lib/x/libc.so.6", 0o755),
            Err(TreeError::Conflict { .. })
        ));
        assert!(
            !t.add_symlink_if_absent("/usr/lib/x/libc.so.6", "y")
                .unwrap()
        );
        assert!(
            t.add_symlink_if_absent("/usr/lib/x/libd.so", "libc.so.6")
                .unwrap()
        );
        assert!(matches!(
            t.lookup("/usr/lib/x/libd.so").unwrap(),
            Some(Node::File { .. })
        ));
        t.ensure_dir("/lib").unwrap();
        assert!(matches!(
            t.add_dir("/", 0o755),
            Err(TreeError::Conflict { .. })
        ));
    }

    #[test]
    fn cpio_has_sorted_entries_with_implicit_parents() {
        let mut t = Tree::new();
        t.add_file("/b/c", 0o644, b"x".to_vec()).unwrap();
        t.add_char_dev("/dev/console", 0o600, 5, 1).unwrap();
        t.add_dir("/a", 0o700).unwrap();
        let entries = t.len();
        let bytes = t.into_cpio().unwrap();
        let names: Vec<usize> = [
            "a\0",
            "b\0",
            "b/c\0",
            "dev\0",
            "dev/console\0",
            "TRAILER!!!\0",
        ]
        .iter()
        .map(|n| {
            bytes
                .windows(n.len())
                .position(|w| w == n.as_bytes())
                .unwrap()
        })
        .collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        assert_eq!(entries, 5);
    }
}
