//! Finding what a dynamically linked binary needs to start, as the dynamic loader would, so
//! `herd build --binary` can bundle it.
//!
//! Each `DT_NEEDED` library is resolved breadth first in glibc's order: the `DT_RPATH`s of the
//! requesting object and of the objects that loaded it (only when it has no `DT_RUNPATH`), its
//! `DT_RUNPATH`, the directories of `/etc/ld.so.conf` (with its `include`s), then the default
//! directories; `$ORIGIN` expands to the directory of the object; names already loaded (by
//! name or soname, the interpreter included) are not searched again; files for another
//! machine are skipped. A library is stored in the image at the path the loader opens it by,
//! and every symlink crossed on the host to reach it is added to the image too, so the guest's
//! loader walks the same paths. Everything is looked up inside a root directory (`/` for real
//! builds, a fake tree in tests).

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::elf::{EM_X86_64, ElfError, ElfInfo};
use super::tree::{Kind, TreeError, Walked, walk};

/// Directories searched last. Beside the loader's own defaults they include `/lib64` and
/// `/usr/lib64` for distributions whose loader searches those.
pub const DEFAULT_DIRS: [&str; 6] = [
    "/lib",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
];
/// Where a library found through an `ld.so.conf` directory also gets a symlink, since the
/// image has no `ld.so.cache` and the guest's loader only searches its default directories.
pub const FALLBACK_DIR: &str = "/usr/lib";

/// Errors finding what a binary needs.
#[derive(Debug, thiserror::Error)]
pub enum LdsoError {
    #[error("cannot read {0}")]
    Read(String, #[source] io::Error),
    #[error("ELF interpreter {interp} of {by} is not on this host")]
    MissingInterpreter { interp: String, by: String },
    #[error("library {lib} needed by {by} not found in {searched}")]
    MissingLibrary {
        lib: String,
        by: String,
        searched: String,
    },
    #[error("resolving {0}")]
    Path(String, #[source] TreeError),
    #[error("ELF interpreter {0} is unusable")]
    Interpreter(String, #[source] ElfError),
}

/// A file to put in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundledFile {
    /// Path in the image (may go through symlinks listed in [`Bundle::symlinks`]).
    pub guest: String,
    /// Where it was read from on the host.
    pub host: PathBuf,
    /// Permission bits.
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Everything a binary needs to load: its interpreter and libraries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bundle {
    /// Regular files, the interpreter first, then libraries in the loader's order.
    pub files: Vec<BundledFile>,
    /// Symlinks crossed on the host, mirrored in the image: (path, target).
    pub symlinks: Vec<(String, String)>,
    /// Symlinks that make libraries found through `ld.so.conf` visible to a loader without a
    /// cache; added only where nothing else is.
    pub fallback_symlinks: Vec<(String, String)>,
}

/// A search directory: how the host reaches it and where the guest's loader will look.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SearchDir {
    host: String,
    guest: String,
    from_conf: bool,
}

/// The `DT_RPATH` of one object with the origins its `$ORIGIN` expands to.
struct Rpath {
    dirs: Vec<String>,
    host_origin: String,
    guest_origin: String,
}

/// An object whose needs are still to be resolved.
struct Object {
    display: String,
    host_origin: String,
    guest_origin: String,
    info: ElfInfo,
    /// `DT_RPATH`s of this object and its loaders, nearest first.
    rpaths: Rc<Vec<Rpath>>,
}

fn dirname(path: &str) -> String {
    match path.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => path[..i].to_owned(),
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Expands `$ORIGIN`/`${ORIGIN}`; `None` for other tokens and relative entries, which we skip.
fn expand(dir: &str, host_origin: &str, guest_origin: &str) -> Option<(String, String)> {
    let sub = |origin: &str| dir.replace("${ORIGIN}", origin).replace("$ORIGIN", origin);
    let (host, guest) = (sub(host_origin), sub(guest_origin));
    (host.starts_with('/') && !host.contains('$')).then_some((host, guest))
}

/// Finds and bundles what a binary needs, inside a root directory.
pub struct Resolver {
    root: PathBuf,
    conf_dirs: Vec<String>,
}

impl Resolver {
    /// A resolver for the filesystem at `root`, reading its `/etc/ld.so.conf`.
    pub fn new(root: &Path) -> Self {
        let mut conf_dirs = Vec::new();
        let mut seen = HashSet::new();
        read_ld_so_conf(root, "/etc/ld.so.conf", 0, &mut seen, &mut conf_dirs);
        Self {
            root: root.to_owned(),
            conf_dirs,
        }
    }

    /// The `ld.so.conf` directories, in order.
    pub fn conf_dirs(&self) -> &[String] {
        &self.conf_dirs
    }

    fn host(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn kind(&self, path: &str) -> Kind {
        match std::fs::symlink_metadata(self.host(path)) {
            Err(_) => Kind::Missing,
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(self.host(path)) {
                Ok(t) => t
                    .to_str()
                    .map_or(Kind::Missing, |t| Kind::Symlink(t.to_owned())),
                Err(_) => Kind::Missing,
            },
            Ok(m) if m.is_dir() => Kind::Dir,
            Ok(_) => Kind::Other,
        }
    }

    /// Resolves `path` (inside the root) to a regular file: its real path and the symlinks on
    /// the way. `None` when there is no such file.
    pub fn resolve_file(&self, path: &str) -> Result<Option<Walked>, LdsoError> {
        let walked = match walk(path, true, |p| self.kind(p)) {
            Ok(w) => w,
            Err(TreeError::NotADirectory(..)) => return Ok(None),
            Err(e) => return Err(LdsoError::Path(path.to_owned(), e)),
        };
        let is_file = std::fs::metadata(self.host(&walked.real)).is_ok_and(|m| m.is_file());
        Ok((is_file && !walked.missing_parent).then_some(walked))
    }

    fn read(&self, real: &str) -> Result<(Vec<u8>, u32), LdsoError> {
        use std::os::unix::fs::PermissionsExt as _;
        let host = self.host(real);
        let data =
            std::fs::read(&host).map_err(|e| LdsoError::Read(host.display().to_string(), e))?;
        let mode =
            std::fs::metadata(&host).map_err(|e| LdsoError::Read(host.display().to_string(), e))?;
        Ok((data, mode.permissions().mode() & 0o777))
    }

    /// Bundles what the executable at `exe` (a path inside the root) needs when the image
    /// holds it at `guest_exe`.
    pub fn bundle(&self, exe: &str, guest_exe: &str, info: &ElfInfo) -> Result<Bundle, LdsoError> {
        let mut out = Bundle::default();
        let Some(interp) = &info.interp else {
            return Ok(out);
        };
        let exe_real = self
            .resolve_file(exe)?
            .map_or_else(|| exe.to_owned(), |w| w.real);
        let mut loaded: HashSet<String> = HashSet::new();
        let Some(walked) = self.resolve_file(interp)? else {
            return Err(LdsoError::MissingInterpreter {
                interp: interp.clone(),
                by: exe.to_owned(),
            });
        };
        let (data, mode) = self.read(&walked.real)?;
        let interp_info =
            ElfInfo::parse(interp, &data).map_err(|e| LdsoError::Interpreter(interp.clone(), e))?;
        loaded.extend(interp_info.soname.clone());
        loaded.insert(interp.rsplit('/').next().unwrap_or(interp).to_owned());
        out.symlinks.extend(walked.links);
        out.files.push(BundledFile {
            guest: walked.real.clone(),
            host: self.host(&walked.real),
            mode,
            data,
        });

        let (host_origin, guest_origin) = (dirname(&exe_real), dirname(guest_exe));
        let rpaths = Rc::new(vec![Rpath {
            dirs: info.rpath.clone(),
            host_origin: host_origin.clone(),
            guest_origin: guest_origin.clone(),
        }]);
        let mut queue = VecDeque::from([Object {
            display: exe.to_owned(),
            host_origin,
            guest_origin,
            info: info.clone(),
            rpaths,
        }]);
        while let Some(object) = queue.pop_front() {
            for name in &object.info.needed {
                if loaded.contains(name) {
                    continue;
                }
                let found = self.find(name, &object)?;
                loaded.insert(name.clone());
                loaded.extend(found.info.soname.clone());
                queue.push_back(self.take(found, &object, &mut out));
            }
        }
        Ok(out)
    }

    /// Adds a found library to the bundle and returns it as an object to resolve.
    fn take(&self, found: Found, parent: &Object, out: &mut Bundle) -> Object {
        let guest = join(&found.dir.guest, &found.name);
        if found.dir.host == found.dir.guest {
            out.symlinks.extend(found.walked.links.iter().cloned());
            out.files.push(BundledFile {
                guest: found.walked.real.clone(),
                host: self.host(&found.walked.real),
                mode: found.mode,
                data: found.data,
            });
            if found.dir.from_conf && !DEFAULT_DIRS.contains(&found.dir.guest.as_str()) {
                out.fallback_symlinks
                    .push((join(FALLBACK_DIR, &found.name), guest.clone()));
            }
        } else {
            // Reached through the executable's $ORIGIN: the guest path differs from the host's.
            out.files.push(BundledFile {
                guest: guest.clone(),
                host: self.host(&found.walked.real),
                mode: found.mode,
                data: found.data,
            });
        }
        let (host_origin, guest_origin) = (found.dir.host.clone(), found.dir.guest.clone());
        let mut rpaths = vec![Rpath {
            dirs: found.info.rpath.clone(),
            host_origin: host_origin.clone(),
            guest_origin: guest_origin.clone(),
        }];
        rpaths.extend(parent.rpaths.iter().map(|r| Rpath {
            dirs: r.dirs.clone(),
            host_origin: r.host_origin.clone(),
            guest_origin: r.guest_origin.clone(),
        }));
        Object {
            display: join(&found.dir.host, &found.name),
            host_origin,
            guest_origin,
            info: found.info,
            rpaths: Rc::new(rpaths),
        }
    }

    /// The directories searched for a library `object` needs, in the loader's order.
    fn search_dirs(&self, object: &Object) -> Vec<SearchDir> {
        let mut dirs = Vec::new();
        let mut push = |(host, guest): (String, String), from_conf: bool| {
            let dir = SearchDir {
                host,
                guest,
                from_conf,
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        };
        if object.info.runpath.is_none() {
            for r in object.rpaths.iter() {
                r.dirs
                    .iter()
                    .filter_map(|d| expand(d, &r.host_origin, &r.guest_origin))
                    .for_each(|d| push(d, false));
            }
        }
        for d in object.info.runpath.iter().flatten() {
            if let Some(d) = expand(d, &object.host_origin, &object.guest_origin) {
                push(d, false);
            }
        }
        self.conf_dirs
            .iter()
            .for_each(|d| push((d.clone(), d.clone()), true));
        DEFAULT_DIRS
            .iter()
            .for_each(|d| push(((*d).to_owned(), (*d).to_owned()), false));
        dirs
    }

    /// Searches for `name` as the loader would for `object`.
    fn find(&self, name: &str, object: &Object) -> Result<Found, LdsoError> {
        let dirs = if name.contains('/') {
            let dir = dirname(&join("/", name));
            vec![SearchDir {
                host: dir.clone(),
                guest: dir,
                from_conf: false,
            }]
        } else {
            self.search_dirs(object)
        };
        let base = name.rsplit('/').next().unwrap_or(name);
        for dir in &dirs {
            let Some(walked) = self.resolve_file(&join(&dir.host, base))? else {
                continue;
            };
            let (data, mode) = self.read(&walked.real)?;
            // The loader skips files that are not objects for this machine and goes on.
            let Ok(info) = ElfInfo::parse(name, &data) else {
                continue;
            };
            if info.machine == EM_X86_64 {
                return Ok(Found {
                    name: base.to_owned(),
                    dir: dir.clone(),
                    walked,
                    data,
                    mode,
                    info,
                });
            }
        }
        let mut searched: Vec<&str> = Vec::new();
        for d in &dirs {
            if !searched.contains(&d.host.as_str()) {
                searched.push(&d.host);
            }
        }
        Err(LdsoError::MissingLibrary {
            lib: name.to_owned(),
            by: object.display.clone(),
            searched: searched.join(":"),
        })
    }
}

/// A library found for a `DT_NEEDED` entry.
struct Found {
    name: String,
    dir: SearchDir,
    walked: Walked,
    data: Vec<u8>,
    mode: u32,
    info: ElfInfo,
}

/// Matches a file name against a pattern with `*` and `?`.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Reads an `ld.so.conf` file: directories one per line (or separated by `:`/`,`/spaces),
/// `include` globs relative to the including file, comments after `#`, `hwcap` lines ignored.
fn read_ld_so_conf(
    root: &Path,
    file: &str,
    depth: usize,
    seen: &mut HashSet<String>,
    out: &mut Vec<String>,
) {
    let Ok(text) = std::fs::read_to_string(root.join(file.trim_start_matches('/'))) else {
        return;
    };
    if depth > 8 || !seen.insert(file.to_owned()) {
        return;
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(patterns) = line
            .strip_prefix("include")
            .filter(|r| r.starts_with([' ', '\t']))
        {
            for pattern in patterns.split_whitespace() {
                let pattern = if pattern.starts_with('/') {
                    pattern.to_owned()
                } else {
                    join(&dirname(file), pattern)
                };
                for included in glob(root, &pattern) {
                    read_ld_so_conf(root, &included, depth + 1, seen, out);
                }
            }
        } else if !line.starts_with("hwcap") {
            for dir in line
                .split([':', ',', ' ', '\t'])
                .map(|d| d.split('=').next().unwrap_or(""))
            {
                if dir.starts_with('/') && !out.iter().any(|d| d == dir) {
                    out.push(dir.trim_end_matches('/').to_owned());
                }
            }
        }
    }
}

/// Files matching a pattern whose last component may hold wildcards, sorted.
fn glob(root: &Path, pattern: &str) -> Vec<String> {
    let (dir, name) = (dirname(pattern), pattern.rsplit('/').next().unwrap_or(""));
    let Ok(entries) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| glob_match(name.as_bytes(), n.as_bytes()))
        .map(|n| join(&dir, &n))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::elf::testing::elf;
    use std::os::unix::fs::symlink;

    fn put(root: &Path, path: &str, data: &[u8]) {
        let host = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(host, data).unwrap();
    }

    fn lib(needed: &[&str], soname: &str) -> Vec<u8> {
        elf(EM_X86_64, None, needed, Some(soname), None, None)
    }

    fn guests(b: &Bundle) -> Vec<&str> {
        b.files.iter().map(|f| f.guest.as_str()).collect()
    }

    #[test]
    fn bundles_a_real_system_binary() {
        let info = ElfInfo::parse("/bin/ls", &std::fs::read("/bin/ls").unwrap()).unwrap();
        let bundle = Resolver::new(Path::new("/"))
            .bundle("/bin/ls", "/app/ls", &info)
            .unwrap();
        let names: Vec<&str> = bundle
            .files
            .iter()
            .map(|f| f.guest.rsplit('/').next().unwrap())
            .collect();
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        assert!(names.contains(&"libc.so.6"), "{names:?}");
        let libc = bundle
            .files
            .iter()
            .find(|f| f.guest.ends_with("/libc.so.6"))
            .unwrap();
        let libc_info = ElfInfo::parse("libc", &libc.data).unwrap();
        assert_eq!(libc_info.soname.as_deref(), Some("libc.so.6"));
        // libc needs the loader by its soname; it must not be bundled a second time.
        assert_eq!(
            bundle
                .files
                .iter()
                .filter(|f| f.guest.contains("ld-linux"))
                .count(),
            1,
            "{:?}",
            guests(&bundle)
        );
        for (link, _) in &bundle.symlinks {
            assert!(
                std::fs::symlink_metadata(link)
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{link}"
            );
        }
    }

    /// A fake root: loader at /lib64/ld.so (through /lib64 -> usr/lib64), libc in
    /// /usr/lib via /lib -> usr/lib and a versioned-name symlink.
    fn fake_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "/usr/lib64/ld.so", &lib(&[], "ld.so"));
        symlink("usr/lib64", r.join("lib64")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        put(r, "/usr/lib/libc.so.6.1", &lib(&["ld.so"], "libc.so.6"));
        symlink("libc.so.6.1", r.join("usr/lib/libc.so.6")).unwrap();
        dir
    }

    #[test]
    fn mirrors_symlinks_and_skips_what_is_already_loaded() {
        let root = fake_root();
        let exe = elf(
            EM_X86_64,
            Some("/lib64/ld.so"),
            &["libc.so.6"],
            None,
            None,
            None,
        );
        put(root.path(), "/bin/app", &exe);
        let info = ElfInfo::parse("app", &exe).unwrap();
        let b = Resolver::new(root.path())
            .bundle("/bin/app", "/app/app", &info)
            .unwrap();
        assert_eq!(guests(&b), ["/usr/lib64/ld.so", "/usr/lib/libc.so.6.1"]);
        assert_eq!(
            b.symlinks,
            [
                ("/lib64".into(), "usr/lib64".into()),
                ("/lib".into(), "usr/lib".into()),
                ("/usr/lib/libc.so.6".into(), "libc.so.6.1".into())
            ]
        );
        assert!(b.fallback_symlinks.is_empty());
    }

    #[test]
    fn origin_rpath_runpath_and_ld_so_conf_are_searched_in_order() {
        let root = fake_root();
        let r = root.path();
        // $ORIGIN of the executable: the guest sees the library relative to /app.
        put(
            r,
            "/opt/app/lib/libown.so",
            &lib(&["libdeep.so"], "libown.so"),
        );
        // libown has no RUNPATH, so the executable's RPATH is searched for its needs too.
        put(
            r,
            "/opt/rpath/libdeep.so",
            &lib(&["libconf.so"], "libdeep.so"),
        );
        put(
            r,
            "/etc/ld.so.conf",
            b"# comment\ninclude ld.so.conf.d/*.conf\n",
        );
        put(r, "/etc/ld.so.conf.d/x.conf", b"/opt/conf # local libs\n");
        put(r, "/etc/ld.so.conf.d/skip.txt", b"/opt/never\n");
        // The first candidate is for another machine: the loader skips it.
        put(
            r,
            "/opt/conf/libconf.so",
            &elf(183, None, &[], None, None, None),
        );
        put(r, "/usr/lib/libconf.so", &lib(&[], "libconf.so"));
        let exe = elf(
            EM_X86_64,
            Some("/lib64/ld.so"),
            &["libown.so"],
            None,
            Some("$ORIGIN/../lib:/opt/rpath"),
            None,
        );
        put(r, "/opt/app/bin/app", &exe);
        let info = ElfInfo::parse("app", &exe).unwrap();
        let resolver = Resolver::new(r);
        assert_eq!(resolver.conf_dirs(), ["/opt/conf"]);
        let b = resolver
            .bundle("/opt/app/bin/app", "/app/app", &info)
            .unwrap();
        assert_eq!(
            guests(&b),
            [
                "/usr/lib64/ld.so",
                "/app/../lib/libown.so",
                "/opt/rpath/libdeep.so",
                "/usr/lib/libconf.so"
            ]
        );

        // With a RUNPATH the executable's RPATH no longer applies to libown's needs.
        put(
            r,
            "/opt/app/lib/libown.so",
            &elf(
                EM_X86_64,
                None,
                &["libdeep.so"],
                None,
                None,
                Some("/nowhere"),
            ),
        );
        let err = resolver
            .bundle("/opt/app/bin/app", "/app/app", &info)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("library libdeep.so needed by /opt/app/bin/../lib/libown.so not found"),
            "{text}"
        );
        assert!(text.contains("/nowhere:/opt/conf:/lib:/usr/lib"), "{text}");

        // A library found only through ld.so.conf also gets a link where the loader looks.
        std::fs::remove_file(r.join("usr/lib/libconf.so")).unwrap();
        put(r, "/opt/conf/libconf.so", &lib(&[], "libconf.so"));
        put(
            r,
            "/opt/app/lib/libown.so",
            &lib(&["libconf.so"], "libown.so"),
        );
        let b = resolver
            .bundle("/opt/app/bin/app", "/app/app", &info)
            .unwrap();
        assert_eq!(guests(&b).last(), Some(&"/opt/conf/libconf.so"));
        assert_eq!(
            b.fallback_symlinks,
            [("/usr/lib/libconf.so".into(), "/opt/conf/libconf.so".into())]
        );
    }

    #[test]
    fn missing_interpreter_is_named() {
        let root = tempfile::tempdir().unwrap();
        let exe = elf(EM_X86_64, Some("/lib64/ld-nope.so"), &[], None, None, None);
        let info = ElfInfo::parse("app", &exe).unwrap();
        let err = Resolver::new(root.path())
            .bundle("/bin/app", "/app/app", &info)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "ELF interpreter /lib64/ld-nope.so of /bin/app is not on this host"
        );
        let static_exe = ElfInfo::parse("s", &elf(EM_X86_64, None, &[], None, None, None)).unwrap();
        assert_eq!(
            Resolver::new(root.path())
                .bundle("/s", "/app/s", &static_exe)
                .unwrap(),
            Bundle::default()
        );
    }

    #[test]
    fn glob_matches_stars_and_questions() {
        assert!(glob_match(b"*.conf", b"libc.conf"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a?c*", b"abcdef"));
        assert!(!glob_match(b"*.conf", b"libc.conf~"));
        assert!(!glob_match(b"a?c", b"ac"));
    }
}
