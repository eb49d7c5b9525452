//! The on-disk format of a backup directory (docs/backup.md): the manifest,
//! one record file per shard, the hooks file, their checksums, and the
//! checks a restore runs before it writes anything.
//!
//! ```text
//! DIR/manifest.json       format version, source cluster, per-file keys, bytes, sha256
//! DIR/shard-00000.rkvs    "RKVSHARD" · u32 BE format version · frames · u32 BE 0 · u64 BE record count
//!                         frame = u32 BE length (> 0) · postcard `Record`
//! DIR/hooks.json          every active hook, prefix and source in base64
//! ```
//!
//! The end marker and record count make a truncated shard file detectable
//! even without the manifest; the sha256 in the manifest catches any other
//! change.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `format` of every manifest.
pub const FORMAT_NAME: &str = "ringkv-backup";
/// The manifest, shard-file and hooks-file layout this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const HOOKS_FILE: &str = "hooks.json";
const SHARD_MAGIC: &[u8; 8] = b"RKVSHARD";
/// A frame longer than this is corruption, not a record (values are at most a few MiB).
const MAX_FRAME: u32 = 256 * 1024 * 1024;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The version (Raft log index) the key had in the source cluster.
    pub version: u64,
    /// Absolute expiry, ms since the Unix epoch.
    pub expires_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    pub format_version: u32,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub created_at_ms: u64,
    /// The `ringkv` version that wrote the backup.
    pub ringkv_version: String,
    /// The key partitioner of the source cluster; only "none" (the built-in ring) exists.
    pub partitioner: String,
    pub source: SourceCluster,
    pub shards: Vec<ShardEntry>,
    pub hooks: HooksEntry,
    pub total_keys: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCluster {
    pub nodes: usize,
    pub node_ids: Vec<u64>,
    pub shards: u32,
    pub replication_factor: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub shard: u32,
    pub file: String,
    pub keys: u64,
    /// Size of the file.
    pub bytes: u64,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// The shard's applied log index the dump was taken at.
    pub applied_index: u64,
    /// The leader that served the dump, and its clock then.
    pub leader_id: u64,
    pub read_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HooksEntry {
    pub file: String,
    pub count: usize,
    pub bytes: u64,
    pub sha256: String,
}

/// `hooks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HooksFile {
    pub format_version: u32,
    /// The source meta group's applied index the hooks were read at (or later).
    pub meta_applied_index: u64,
    pub hooks: Vec<BackedUpHook>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUpHook {
    pub name: String,
    /// "lua" or "wasm".
    pub kind: String,
    /// "validate" or "ttl".
    pub stage: String,
    #[serde(with = "b64")]
    pub prefix: Vec<u8>,
    #[serde(with = "b64")]
    pub source: Vec<u8>,
    pub fail_open: bool,
    pub timeout_ms: u64,
    /// What the source cluster knew: the version and the hex sha256 of `source`.
    pub version: u64,
    pub sha256: String,
    pub deployed_at_ms: u64,
}

/// Bytes as standard base64 strings in JSON.
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file name of shard `shard`'s records.
pub fn shard_file_name(shard: u32) -> String {
    format!("shard-{shard:05}.rkvs")
}

/// A `Write` that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes one shard file.
pub struct ShardWriter {
    out: Hashing<BufWriter<File>>,
    keys: u64,
}

/// What a finished shard file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub keys: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl ShardWriter {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = Hashing { inner: BufWriter::new(file), hasher: Sha256::new(), bytes: 0 };
        out.write_all(SHARD_MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_be_bytes())?;
        Ok(Self { out, keys: 0 })
    }

    pub fn push(&mut self, record: &Record) -> anyhow::Result<()> {
        let frame = postcard::to_stdvec(record).context("encoding a record")?;
        let len = u32::try_from(frame.len()).ok().filter(|l| *l > 0 && *l <= MAX_FRAME).with_context(|| {
            format!("a record of {} bytes does not fit a frame (key {:?})", frame.len(), lossy(&record.key))
        })?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&frame)?;
        self.keys += 1;
        Ok(())
    }

    /// Writes the end marker and syncs the file to disk.
    pub fn finish(mut self) -> anyhow::Result<Written> {
        self.out.write_all(&0u32.to_be_bytes())?;
        self.out.write_all(&self.keys.to_be_bytes())?;
        self.out.flush()?;
        let file = self.out.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Written { keys: self.keys, bytes: self.out.bytes, sha256: hex(&self.out.hasher.finalize()) })
    }
}

/// Reads one shard file's records in order, checking its framing: header,
/// version, end marker, record count and nothing after it.
pub struct ShardReader {
    input: BufReader<File>,
    name: String,
    read: u64,
    done: bool,
}

impl ShardReader {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let name = path.display().to_string();
        let mut input = BufReader::new(File::open(path).with_context(|| format!("opening {name}"))?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).with_context(|| format!("{name}: too short for a shard file"))?;
        ensure!(&magic == SHARD_MAGIC, "{name} is not a ringkv shard file");
        let mut version = [0u8; 4];
        input.read_exact(&mut version).with_context(|| format!("{name}: truncated header"))?;
        let version = u32::from_be_bytes(version);
        ensure!(
            version == FORMAT_VERSION,
            "{name} has shard format version {version}; this ringkv reads version {FORMAT_VERSION}"
        );
        Ok(Self { input, name, read: 0, done: false })
    }

    fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let name = &self.name;
        let mut len = [0u8; 4];
        self.input
            .read_exact(&mut len)
            .with_context(|| format!("{name} is truncated after {} records (no end marker)", self.read))?;
        let len = u32::from_be_bytes(len);
        if len == 0 {
            let mut count = [0u8; 8];
            self.input.read_exact(&mut count).with_context(|| format!("{name}: truncated end marker"))?;
            let count = u64::from_be_bytes(count);
            ensure!(count == self.read, "{name} says it holds {count} records but has {}", self.read);
            let mut rest = [0u8; 1];
            ensure!(self.input.read(&mut rest)? == 0, "{name} has data after its end marker");
            self.done = true;
            return Ok(None);
        }
        ensure!(len <= MAX_FRAME, "{name}: record {} has an impossible length {len}", self.read + 1);
        let mut frame = vec![0u8; len as usize];
        self.input.read_exact(&mut frame).with_context(|| format!("{name}: record {} is truncated", self.read + 1))?;
        let record: Record =
            postcard::from_bytes(&frame).with_context(|| format!("{name}: record {} is corrupt", self.read + 1))?;
        self.read += 1;
        Ok(Some(record))
    }
}

impl Iterator for ShardReader {
    type Item = anyhow::Result<Record>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_record() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A verified backup directory: every checksum, size and count matched.
#[derive(Debug)]
pub struct Verified {
    pub manifest: Manifest,
    pub hooks: HooksFile,
}

/// Hex sha256 and size of a file, streamed.
fn file_digest(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut input = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut input, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok((hex(&hasher.finalize()), bytes))
}

fn check_file(dir: &Path, file: &str, bytes: u64, sha256: &str) -> anyhow::Result<()> {
    ensure!(
        !file.is_empty() && Path::new(file).file_name().is_some_and(|n| n == file),
        "the manifest names a file outside the backup directory: {file:?}"
    );
    let (actual, size) = file_digest(&dir.join(file))?;
    ensure!(actual == sha256, "{file} does not match its sha256 in the manifest: the backup is damaged");
    ensure!(size == bytes, "{file} is {size} bytes, the manifest says {bytes}: the backup is damaged");
    Ok(())
}

/// Reads `dir/manifest.json` and checks its format, version and partitioner.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&path)
        .with_context(|| format!("reading {} (is {} a finished backup?)", path.display(), dir.display()))?;
    let raw: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let format = raw.get("format").and_then(|v| v.as_str()).unwrap_or_default();
    ensure!(format == FORMAT_NAME, "{} is not a ringkv backup manifest", path.display());
    let version = raw.get("format_version").and_then(|v| v.as_u64()).unwrap_or_default();
    ensure!(
        version == u64::from(FORMAT_VERSION),
        "the backup has format version {version}; this ringkv reads version {FORMAT_VERSION}"
    );
    let manifest: Manifest =
        serde_json::from_value(raw).with_context(|| format!("{} is not a valid manifest", path.display()))?;
    if manifest.partitioner != "none" {
        bail!(
            "the backup was taken with partitioner {:?}, which this ringkv does not know; only \"none\" (the built-in ring) is supported",
            manifest.partitioner
        );
    }
    Ok(manifest)
}

/// Checks everything a restore will read, before it writes anything: the
/// manifest, the hooks file, and every shard file's size, sha256, framing
/// and record count.
pub fn verify(dir: &Path) -> anyhow::Result<Verified> {
    let manifest = read_manifest(dir)?;
    check_file(dir, &manifest.hooks.file, manifest.hooks.bytes, &manifest.hooks.sha256)?;
    let hooks: HooksFile = serde_json::from_slice(&std::fs::read(dir.join(&manifest.hooks.file))?)
        .with_context(|| format!("{} is not a valid hooks file", manifest.hooks.file))?;
    ensure!(hooks.format_version == FORMAT_VERSION, "hooks file format version {} is unknown", hooks.format_version);
    ensure!(
        hooks.hooks.len() == manifest.hooks.count,
        "the hooks file holds {} hooks, the manifest says {}",
        hooks.hooks.len(),
        manifest.hooks.count
    );
    for h in &hooks.hooks {
        ensure!(sha256_hex(&h.source) == h.sha256, "the source of hook {} does not match its sha256", h.name);
    }
    let mut seen = std::collections::BTreeSet::new();
    for s in &manifest.shards {
        ensure!(seen.insert(s.shard), "the manifest lists shard {} twice", s.shard);
        check_file(dir, &s.file, s.bytes, &s.sha256)?;
        let mut keys = 0u64;
        for record in ShardReader::open(&dir.join(&s.file))? {
            record?;
            keys += 1;
        }
        ensure!(keys == s.keys, "{} holds {keys} records, the manifest says {}", s.file, s.keys);
    }
    ensure!(
        seen.len() as u64 == u64::from(manifest.source.shards),
        "the manifest lists {} shard files for a {}-shard cluster",
        seen.len(),
        manifest.source.shards
    );
    let total: u64 = manifest.shards.iter().map(|s| s.keys).sum();
    ensure!(total == manifest.total_keys, "the manifest's total of {} keys does not add up", manifest.total_keys);
    Ok(Verified { manifest, hooks })
}

/// Writes `value` as pretty JSON to `path` and syncs it; returns its size and sha256.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<(u64, String)> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    Ok((bytes.len() as u64, sha256_hex(&bytes)))
}

/// A key for messages: UTF-8 where it is, escaped elsewhere.
pub fn lossy(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u32) -> Record {
        Record {
            key: format!("key/{i}").into_bytes(),
            value: vec![i as u8; (i % 7) as usize],
            version: u64::from(i) + 10,
            expires_at_ms: i.is_multiple_of(2).then_some(1_000_000 + u64::from(i)),
        }
    }

    /// A complete two-shard backup in `dir`, as `ringkv backup` writes it.
    fn write_backup(dir: &Path) -> Manifest {
        let mut shards = Vec::new();
        for shard in 0..2u32 {
            let file = shard_file_name(shard);
            let mut w = ShardWriter::create(&dir.join(&file)).expect("create");
            for i in 0..50 {
                w.push(&record(shard * 100 + i)).expect("push");
            }
            let written = w.finish().expect("finish");
            shards.push(ShardEntry {
                shard,
                file,
                keys: written.keys,
                bytes: written.bytes,
                sha256: written.sha256,
                applied_index: 7,
                leader_id: 1,
                read_at_ms: 5,
            });
        }
        let source = b"function validate() return true end".to_vec();
        let hooks = HooksFile {
            format_version: FORMAT_VERSION,
            meta_applied_index: 3,
            hooks: vec![BackedUpHook {
                name: "v".into(),
                kind: "lua".into(),
                stage: "validate".into(),
                prefix: b"users/\xff".to_vec(),
                sha256: sha256_hex(&source),
                source,
                fail_open: false,
                timeout_ms: 10,
                version: 2,
                deployed_at_ms: 1,
            }],
        };
        let (bytes, sha256) = write_json(&dir.join(HOOKS_FILE), &hooks).expect("hooks");
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            created_at: "2026-01-01T00:00:00Z".into(),
            created_at_ms: 0,
            ringkv_version: "test".into(),
            partitioner: "none".into(),
            source: SourceCluster { nodes: 1, node_ids: vec![1], shards: 2, replication_factor: 1 },
            total_keys: shards.iter().map(|s| s.keys).sum(),
            total_bytes: shards.iter().map(|s| s.bytes).sum(),
            shards,
            hooks: HooksEntry { file: HOOKS_FILE.into(), count: 1, bytes, sha256 },
        };
        write_json(&dir.join(MANIFEST_FILE), &manifest).expect("manifest");
        manifest
    }

    fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join(MANIFEST_FILE);
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("manifest is JSON");
        f(&mut m);
        std::fs::write(&path, serde_json::to_vec(&m).expect("encode")).expect("write");
    }

    fn refusal(dir: &Path) -> String {
        format!("{:#}", verify(dir).expect_err("a damaged backup must be refused"))
    }

    #[test]
    fn a_written_backup_verifies_and_reads_back_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let manifest = write_backup(dir.path());
        let verified = verify(dir.path()).expect("verify");
        assert_eq!(verified.manifest, manifest);
        assert_eq!(verified.hooks.hooks[0].prefix, b"users/\xff");
        let back: Vec<Record> = ShardReader::open(&dir.path().join(shard_file_name(1)))
            .expect("open")
            .collect::<anyhow::Result<_>>()
            .expect("read");
        assert_eq!(back, (100..150).map(record).collect::<Vec<_>>());
    }

    #[test]
    fn a_flipped_byte_in_a_shard_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_backup(dir.path());
        let path = dir.path().join(shard_file_name(0));
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).expect("write");
        assert!(refusal(dir.path()).contains("does not match its sha256"), "{}", refusal(dir.path()));
    }

    #[test]
    fn a_truncated_shard_file_is_refused_even_with_a_matching_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_backup(dir.path());
        let path = dir.path().join(shard_file_name(1));
        let bytes = std::fs::read(&path).expect("read");
        let cut = &bytes[..bytes.len() - 20];
        std::fs::write(&path, cut).expect("write");
        let (sha, len) = (sha256_hex(cut), cut.len());
        edit_manifest(dir.path(), |m| {
            m["shards"][1]["sha256"] = sha.into();
            m["shards"][1]["bytes"] = len.into();
        });
        assert!(refusal(dir.path()).contains("truncated"), "{}", refusal(dir.path()));
    }

    #[test]
    fn a_changed_hooks_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_backup(dir.path());
        let path = dir.path().join(HOOKS_FILE);
        let text = std::fs::read_to_string(&path).expect("read").replace("\"fail_open\": false", "\"fail_open\": true");
        std::fs::write(&path, text).expect("write");
        assert!(refusal(dir.path()).contains("hooks.json does not match"), "{}", refusal(dir.path()));
    }

    #[test]
    fn a_missing_shard_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_backup(dir.path());
        std::fs::remove_file(dir.path().join(shard_file_name(0))).expect("remove");
        assert!(refusal(dir.path()).contains("shard-00000.rkvs"), "{}", refusal(dir.path()));
        edit_manifest(dir.path(), |m| {
            let shards = m["shards"].as_array_mut().expect("shards");
            shards.remove(0);
        });
        assert!(refusal(dir.path()).contains("1 shard files for a 2-shard cluster"), "{}", refusal(dir.path()));
    }

    #[test]
    fn an_unknown_format_version_or_partitioner_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_backup(dir.path());
        edit_manifest(dir.path(), |m| m["partitioner"] = "wasm:by-tenant".into());
        assert!(refusal(dir.path()).contains("partitioner \"wasm:by-tenant\""), "{}", refusal(dir.path()));
        edit_manifest(dir.path(), |m| m["format_version"] = 2.into());
        assert!(refusal(dir.path()).contains("format version 2"), "{}", refusal(dir.path()));
    }

    #[test]
    fn a_file_name_outside_the_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_backup(dir.path());
        edit_manifest(dir.path(), |m| m["shards"][0]["file"] = "../elsewhere.rkvs".into());
        assert!(refusal(dir.path()).contains("outside the backup directory"), "{}", refusal(dir.path()));
    }

    #[test]
    fn a_directory_without_a_manifest_is_not_a_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(refusal(dir.path()).contains("a finished backup?"), "{}", refusal(dir.path()));
    }
}
