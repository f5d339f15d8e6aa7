//! Shared by the image end-to-end tests: a temporary `HERD_HOME` with a fake kernel and init,
//! a runner for the real `herd` binary, a store snapshot, and a newc reader that resolves
//! symlinks as the guest would.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herd::image::tree::{Kind, walk};

/// A temporary HERD_HOME and work directory with the fake kernel and init in it.
pub struct Env {
    pub home: tempfile::TempDir,
    pub work: tempfile::TempDir,
}

/// What a `herd` run gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "herd failed: {self:#?}");
        self
    }

    pub fn fails(self, code: i32, message: &str) -> Self {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(
            self.stderr.contains(message),
            "stderr lacks {message:?}: {self:#?}"
        );
        if self.stderr.starts_with("herd: error: ") {
            assert_eq!(self.stderr.lines().count(), 1, "one error line: {self:#?}");
        } else {
            assert_eq!(code, 64, "only usage errors come from clap: {self:#?}");
        }
        self
    }

    /// The last stdout line: the digest for build, save and load.
    pub fn digest(&self) -> String {
        let last = self.stdout.lines().last().unwrap_or_default().to_owned();
        assert!(last.starts_with("sha256:") && last.len() == 71, "{self:#?}");
        last
    }
}

impl Env {
    pub fn new() -> Self {
        let env = Self {
            home: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        };
        let mut kernel = b"\x7fELF\x02\x01\x01\0".to_vec();
        kernel.resize(4096, 0xaa);
        std::fs::write(env.path("kernel"), kernel).unwrap();
        std::fs::write(env.path("init"), b"fake herd-init").unwrap();
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    pub fn store(&self) -> PathBuf {
        self.home.path().join("images")
    }

    pub fn herd(&self, args: &[&str]) -> Run {
        let out: Output = Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(args)
            .env("HERD_HOME", self.home.path())
            .env_remove("HERD_KERNEL")
            .env("HERD_CACHE", self.path("no-cache"))
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `herd build` with the fake kernel and init plus `args`.
    pub fn build(&self, args: &[&str]) -> Run {
        let (kernel, init) = (self.path("kernel"), self.path("init"));
        let mut all = vec![
            "build",
            "--kernel",
            kernel.to_str().unwrap(),
            "--init",
            init.to_str().unwrap(),
        ];
        all.extend(args);
        self.herd(&all)
    }

    /// Every file under the store with its bytes (lock files aside).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        fn walk_dir(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                if entry.path().is_dir() {
                    walk_dir(&entry.path(), &format!("{name}/"), out);
                } else if !name.contains(".lock-") {
                    out.insert(name, std::fs::read(entry.path()).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk_dir(&self.store(), "", &mut out);
        out
    }

    pub fn inspect(&self, reference: &str) -> serde_json::Value {
        serde_json::from_str(&self.herd(&["image", "inspect", reference]).ok().stdout).unwrap()
    }

    /// The initramfs of an image, parsed.
    pub fn initramfs(&self, reference: &str) -> Cpio {
        let doc = self.inspect(reference);
        Cpio::parse(&std::fs::read(doc["initramfs"]["path"].as_str().unwrap()).unwrap())
    }
}

/// One newc entry: mode, data (symlink target for links), device numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub mode: u32,
    pub data: Vec<u8>,
    pub rdev: (u32, u32),
    pub uid_gid_mtime: (u32, u32, u32),
}

/// A parsed newc archive, paths absolute.
pub struct Cpio(pub BTreeMap<String, CpioEntry>);

impl Cpio {
    pub fn parse(bytes: &[u8]) -> Self {
        let mut entries = BTreeMap::new();
        let mut off = 0;
        loop {
            assert_eq!(&bytes[off..off + 6], b"070701", "newc magic at {off}");
            let field = |i: usize| {
                let text = std::str::from_utf8(&bytes[off + 6 + i * 8..off + 14 + i * 8]).unwrap();
                u32::from_str_radix(text, 16).unwrap()
            };
            let (size, namesize) = (field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&bytes[off + 110..off + 110 + namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = (off + 110 + namesize).next_multiple_of(4);
            let data = bytes[data_start..data_start + size].to_vec();
            let entry = CpioEntry {
                mode: field(1),
                data,
                rdev: (field(9), field(10)),
                uid_gid_mtime: (field(2), field(3), field(5)),
            };
            off = (data_start + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(off, bytes.len(), "nothing after the trailer");
                return Self(entries);
            }
            let previous = entries.insert(format!("/{name}"), entry);
            assert!(previous.is_none(), "{name} twice");
        }
    }

    /// The entry at `path`, following symlinks inside the archive as the guest would.
    pub fn resolve(&self, path: &str) -> Option<&CpioEntry> {
        let kind = |p: &str| match self.0.get(p) {
            None => Kind::Missing,
            Some(e) if e.mode & 0o170000 == 0o040000 => Kind::Dir,
            Some(e) if e.mode & 0o170000 == 0o120000 => {
                Kind::Symlink(String::from_utf8(e.data.clone()).unwrap())
            }
            Some(_) => Kind::Other,
        };
        let walked = walk(path, true, kind).ok()?;
        self.0.get(&walked.real)
    }

    pub fn file(&self, path: &str) -> &[u8] {
        let entry = self
            .resolve(path)
            .unwrap_or_else(|| panic!("{path} is not in the initramfs: {:?}", self.0.keys()));
        assert_eq!(entry.mode & 0o170000, 0o100000, "{path} is a regular file");
        &entry.data
    }
}
