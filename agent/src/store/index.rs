//! `index.json` of the store's OCI layout and the image references that resolve against it.
//!
//! Each herd image in the index is a manifest descriptor annotated with its `name:version`
//! (`org.opencontainers.image.ref.name`) and a store-assigned sequence number
//! (`dev.herd.sequence`, one more than the highest in the index when the ref was last
//! pointed at a new digest). `name` alone resolves to the entry of that name with the highest
//! sequence: the one built or loaded last. Descriptors we do not understand are kept as is.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageIndexBuilder, MediaType};
use serde_json::Value;

use super::StoreError;
use super::files::{digest_hex, write_atomic};
use crate::image::config::{valid_name, valid_version};
use crate::image::{ARTIFACT_TYPE, MANIFEST_MEDIA_TYPE, REF_NAME_ANNOTATION, canonical_json};

/// Annotation holding the store's sequence number of an entry.
pub const SEQUENCE_ANNOTATION: &str = "dev.herd.sequence";
/// Shortest digest prefix accepted as a reference.
pub const MIN_PREFIX: usize = 4;
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One `name:version` pointing at a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// Manifest size in bytes.
    pub size: u64,
    pub sequence: u64,
}

impl Entry {
    /// `name:version`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// The parsed index: herd entries plus descriptors kept verbatim.
#[derive(Clone, Debug, Default)]
pub struct Index {
    pub entries: Vec<Entry>,
    foreign: Vec<Descriptor>,
}

/// What a user-supplied image reference denotes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// `name:version`.
    Tagged { name: String, version: String },
    /// `name`: the newest entry of that name; if none, and it is hex, a digest prefix.
    Name(String),
    /// `sha256:<hex prefix>` (lowercased).
    Digest(String),
}

fn is_hex_prefix(s: &str) -> bool {
    (MIN_PREFIX..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Splits `name:version`, checking both halves.
pub fn split_tagged(s: &str) -> Option<(String, String)> {
    let (name, version) = s.split_once(':')?;
    (valid_name(name) && valid_version(version)).then(|| (name.to_owned(), version.to_owned()))
}

impl Reference {
    /// Parses `name:version`, `name`, `sha256:<hex prefix>` or a bare hex prefix.
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::BadReference(s.to_owned());
        if let Some(prefix) = s.strip_prefix("sha256:") {
            return if is_hex_prefix(prefix) {
                Ok(Self::Digest(prefix.to_ascii_lowercase()))
            } else {
                Err(bad())
            };
        }
        if s.contains(':') {
            let (name, version) = split_tagged(s).ok_or_else(bad)?;
            return Ok(Self::Tagged { name, version });
        }
        if valid_name(s) {
            Ok(Self::Name(s.to_owned()))
        } else if is_hex_prefix(s) {
            Ok(Self::Digest(s.to_ascii_lowercase()))
        } else {
            Err(bad())
        }
    }
}

impl Index {
    /// Reads `index.json` in `dir`; a missing file is an empty index.
    pub fn read(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("index.json");
        let bytes = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            other => other.map_err(super::files::io_err("read", &path))?,
        };
        let index: ImageIndex =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadJson {
                location: path.display().to_string(),
                what: "OCI image index",
                source: e,
            })?;
        let mut out = Self::default();
        for descriptor in index.manifests() {
            match herd_entry(descriptor) {
                Some(entry) => out.entries.push(entry),
                None => out.foreign.push(descriptor.clone()),
            }
        }
        Ok(out)
    }

    /// An index of just these entries.
    pub fn from_entries(entries: Vec<Entry>) -> Self {
        Self {
            entries,
            foreign: Vec::new(),
        }
    }

    /// Writes `index.json` in `dir` atomically. Hold the index lock.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        write_atomic(&dir.join("index.json"), &self.to_json(true), 0o644)
    }

    /// Canonical `index.json` bytes; `with_sequence: false` for exported archives, whose
    /// content must not depend on the store's history.
    pub fn to_json(&self, with_sequence: bool) -> Vec<u8> {
        let mut manifests: Vec<Descriptor> = self
            .entries
            .iter()
            .map(|e| descriptor(e, with_sequence))
            .collect();
        manifests.extend(self.foreign.iter().cloned());
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(manifests)
            .build()
            .expect("every required index field is set");
        canonical_json(&index)
    }

    /// Every manifest digest the index refers to (herd and foreign).
    pub fn manifest_digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self.entries.iter().map(|e| e.digest.clone()).collect();
        out.extend(self.foreign.iter().map(|d| d.digest().to_string()));
        out
    }

    /// Points `name:version` at `digest`. Unchanged if it already does; otherwise the entry
    /// gets the next sequence number. Returns the digest it pointed at before, if any other.
    pub fn set(&mut self, name: &str, version: &str, digest: &str, size: u64) -> Option<String> {
        let next = self.entries.iter().map(|e| e.sequence).max().unwrap_or(0) + 1;
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.name == name && e.version == version)
        {
            if entry.digest == digest && entry.size == size {
                return None;
            }
            let old = std::mem::replace(&mut entry.digest, digest.to_owned());
            entry.size = size;
            entry.sequence = next;
            return Some(old).filter(|old| old != digest);
        }
        let entry = Entry {
            name: name.into(),
            version: version.into(),
            digest: digest.into(),
            size,
            sequence: next,
        };
        self.entries.push(entry);
        None
    }

    /// Removes entries; returns their references.
    pub fn remove(&mut self, remove: &[Entry]) -> Vec<String> {
        self.entries.retain(|e| !remove.contains(e));
        remove.iter().map(Entry::reference).collect()
    }

    /// The entries a reference denotes: one for a name or `name:version`, every entry of the
    /// digest for a digest prefix.
    pub fn find(&self, text: &str) -> Result<Vec<Entry>, StoreError> {
        let not_found = || StoreError::NotFound(text.to_owned());
        match Reference::parse(text)? {
            Reference::Tagged { name, version } => {
                let entry = self
                    .entries
                    .iter()
                    .find(|e| e.name == name && e.version == version);
                entry.cloned().map(|e| vec![e]).ok_or_else(not_found)
            }
            Reference::Name(name) => {
                let newest = self
                    .entries
                    .iter()
                    .filter(|e| e.name == name)
                    .max_by_key(|e| e.sequence);
                match newest {
                    Some(entry) => Ok(vec![entry.clone()]),
                    None if is_hex_prefix(&name) => self.find_digest(text, &name),
                    None => Err(not_found()),
                }
            }
            Reference::Digest(prefix) => self.find_digest(text, &prefix),
        }
    }

    fn find_digest(&self, text: &str, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let mut by_digest: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
        for entry in &self.entries {
            if digest_hex(&entry.digest).is_some_and(|h| h.starts_with(prefix)) {
                by_digest.entry(&entry.digest).or_default().push(entry);
            }
        }
        match by_digest.len() {
            0 => Err(StoreError::NotFound(text.to_owned())),
            1 => Ok(by_digest
                .into_values()
                .next()
                .unwrap_or_default()
                .into_iter()
                .cloned()
                .collect()),
            _ => {
                let candidates: Vec<String> = by_digest
                    .iter()
                    .map(|(digest, entries)| {
                        let refs: Vec<String> = entries.iter().map(|e| e.reference()).collect();
                        format!("{} ({})", &digest[7..19], refs.join(", "))
                    })
                    .collect();
                Err(StoreError::Ambiguous {
                    reference: text.to_owned(),
                    candidates: candidates.join(", "),
                })
            }
        }
    }
}

fn descriptor(entry: &Entry, with_sequence: bool) -> Descriptor {
    let mut annotations = HashMap::from([(REF_NAME_ANNOTATION.to_owned(), entry.reference())]);
    if with_sequence {
        annotations.insert(SEQUENCE_ANNOTATION.to_owned(), entry.sequence.to_string());
    }
    let digest: oci_spec::image::Digest = entry
        .digest
        .parse()
        .expect("index digests are validated when read");
    let mut d = Descriptor::new(MediaType::ImageManifest, entry.size, digest);
    d.set_artifact_type(Some(MediaType::from(ARTIFACT_TYPE)));
    d.set_annotations(Some(annotations));
    d
}

/// The herd entry a descriptor describes, if it is one.
fn herd_entry(d: &Descriptor) -> Option<Entry> {
    if d.media_type().as_ref() != MANIFEST_MEDIA_TYPE {
        return None;
    }
    let annotations = d.annotations().as_ref()?;
    let (name, version) = split_tagged(annotations.get(REF_NAME_ANNOTATION)?)?;
    let digest = d.digest().to_string();
    digest_hex(&digest)?;
    let sequence = annotations
        .get(SEQUENCE_ANNOTATION)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some(Entry {
        name,
        version,
        digest,
        size: d.size(),
        sequence,
    })
}

fn check_keys(value: &Value, allowed: &[&str], what: &str) -> Result<(), String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("{what} is not a JSON object"))?;
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(format!("{what} has unknown field {key:?}")),
        None => Ok(()),
    }
}

/// Parses an archive's `index.json` strictly: unknown fields, foreign descriptors and refs
/// that are not `name:version` are refused, so a damaged index cannot import quietly.
pub fn parse_archive_index(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("index.json is not JSON: {e}"))?;
    let keys = [
        "schemaVersion",
        "mediaType",
        "manifests",
        "annotations",
        "artifactType",
        "subject",
    ];
    check_keys(&value, &keys, "index.json")?;
    if value["schemaVersion"] != 2 {
        return Err("index.json schemaVersion is not 2".into());
    }
    if value
        .get("mediaType")
        .is_some_and(|m| m.as_str() != Some(INDEX_MEDIA_TYPE))
    {
        return Err("index.json mediaType is not an OCI image index".into());
    }
    let manifests = value["manifests"]
        .as_array()
        .ok_or("index.json has no manifests list")?;
    let keys = [
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "platform",
        "artifactType",
        "data",
    ];
    let mut entries = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        check_keys(m, &keys, &format!("manifest descriptor {i}"))?;
        let d: Descriptor = serde_json::from_value(m.clone())
            .map_err(|e| format!("manifest descriptor {i}: {e}"))?;
        if d.artifact_type()
            .as_ref()
            .is_some_and(|a| a.as_ref() != ARTIFACT_TYPE)
        {
            return Err(format!("manifest descriptor {i} is not a herd image"));
        }
        let entry = herd_entry(&d).ok_or_else(|| {
            format!("manifest descriptor {i} is not a herd image manifest named name:version")
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, version: &str, hex_char: char, sequence: u64) -> Entry {
        let digest = format!("sha256:{}", hex_char.to_string().repeat(64));
        Entry {
            name: name.into(),
            version: version.into(),
            digest,
            size: 10,
            sequence,
        }
    }

    fn index() -> Index {
        let mut e3 = entry("other", "1", 'a', 3);
        e3.digest.replace_range(7..9, "ab");
        Index {
            entries: vec![
                entry("hello", "1.0", 'a', 1),
                entry("hello", "2.0", 'b', 2),
                e3,
                entry("cafe", "1", 'c', 4),
            ],
            foreign: vec![],
        }
    }

    fn refs(found: Result<Vec<Entry>, StoreError>) -> Vec<String> {
        found.unwrap().iter().map(Entry::reference).collect()
    }

    #[test]
    fn references_parse_by_shape() {
        assert_eq!(
            Reference::parse("a:1").unwrap(),
            Reference::Tagged {
                name: "a".into(),
                version: "1".into()
            }
        );
        assert_eq!(Reference::parse("a").unwrap(), Reference::Name("a".into()));
        assert_eq!(
            Reference::parse("sha256:ABCD").unwrap(),
            Reference::Digest("abcd".into())
        );
        assert_eq!(
            Reference::parse("ABCDE").unwrap(),
            Reference::Digest("abcde".into())
        );
        for bad in [
            "",
            "sha256:abc",
            "sha256:xyz0",
            "A:1",
            "a:",
            ":1",
            "a b",
            "a:1:2",
            &"A".repeat(65),
        ] {
            assert!(
                matches!(Reference::parse(bad), Err(StoreError::BadReference(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn refs_resolve_by_tag_newest_name_or_unique_digest_prefix() {
        let idx = index();
        assert_eq!(refs(idx.find("hello:1.0")), ["hello:1.0"]);
        assert_eq!(refs(idx.find("hello")), ["hello:2.0"]);
        assert_eq!(refs(idx.find("bbbb")), ["hello:2.0"]);
        assert_eq!(refs(idx.find("sha256:aaaa")), ["hello:1.0"]);
        // A name wins over a digest prefix spelled the same; hex that is no name is a prefix.
        assert_eq!(refs(idx.find("cafe")), ["cafe:1"]);
        assert_eq!(refs(idx.find("cccc")), ["cafe:1"]);
        assert!(matches!(idx.find("hello:3"), Err(StoreError::NotFound(_))));
        assert!(matches!(idx.find("nope"), Err(StoreError::NotFound(_))));
        assert!(matches!(idx.find("dddd"), Err(StoreError::NotFound(_))));
        let err = idx.find("sha256:a").unwrap_err();
        assert!(matches!(err, StoreError::BadReference(_)), "{err}");
        let err = idx.find("aaa0").unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        let text = idx.find("sha256:a").unwrap_err().to_string();
        assert!(text.contains("at least 4"), "{text}");
    }

    #[test]
    fn ambiguous_prefix_lists_candidates() {
        let mut idx = index();
        idx.entries[2].digest = format!("sha256:aaaa{}", "0".repeat(60));
        let text = idx.find("aaaa").unwrap_err().to_string();
        assert!(
            text.contains("aaaa00000000 (other:1)") && text.contains("aaaaaaaaaaaa (hello:1.0)"),
            "{text}"
        );
    }

    #[test]
    fn set_is_idempotent_and_bumps_the_sequence_on_change() {
        let mut idx = index();
        let digest_a = idx.entries[0].digest.clone();
        assert_eq!(idx.set("hello", "1.0", &digest_a, 10), None);
        assert_eq!(idx.entries[0].sequence, 1);
        let new = format!("sha256:{}", "e".repeat(64));
        assert_eq!(idx.set("hello", "1.0", &new, 10), Some(digest_a));
        assert_eq!(idx.entries[0].sequence, 5);
        assert_eq!(refs(idx.find("hello")), ["hello:1.0"]);
        idx.set("new", "1", &new, 10);
        assert_eq!(idx.entries.last().unwrap().sequence, 6);
    }

    #[test]
    fn index_json_round_trips_and_keeps_foreign_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = index();
        let foreign = Descriptor::new(
            MediaType::ImageManifest,
            5,
            format!("sha256:{}", "f".repeat(64))
                .parse::<oci_spec::image::Digest>()
                .unwrap(),
        );
        idx.foreign.push(foreign);
        idx.write(dir.path()).unwrap();
        let back = Index::read(dir.path()).unwrap();
        assert_eq!(back.entries, idx.entries);
        assert_eq!(back.foreign.len(), 1);
        assert_eq!(back.manifest_digests().len(), 5);
        let text = String::from_utf8(idx.to_json(false)).unwrap();
        assert!(
            !text.contains(SEQUENCE_ANNOTATION) && text.contains(REF_NAME_ANNOTATION),
            "{text}"
        );
        assert!(
            Index::read(&dir.path().join("missing"))
                .unwrap()
                .entries
                .is_empty()
        );
    }

    #[test]
    fn archive_index_is_parsed_strictly() {
        let idx = Index {
            entries: vec![entry("hello", "1.0", 'a', 0)],
            foreign: vec![],
        };
        let good = idx.to_json(false);
        assert_eq!(parse_archive_index(&good).unwrap(), idx.entries);
        let text = String::from_utf8(good).unwrap();
        for (from, to) in [
            (
                "\"mediaType\":\"application/vnd.oci.image.index",
                "\"mediaTypf\":\"application/vnd.oci.image.index",
            ),
            ("\"schemaVersion\":2", "\"schemaVersion\":3"),
            ("hello:1.0", "hello:1:0"),
            (
                "org.opencontainers.image.ref.name",
                "org.opencontainers.image.ref.namf",
            ),
            ("vnd.herd.image.v1", "vnd.herd.image.v2"),
            ("manifest.v1+json", "manifest.v2+json"),
        ] {
            let bad = text.replace(from, to);
            assert_ne!(bad, text);
            assert!(parse_archive_index(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
