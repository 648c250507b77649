//! Where checkpoints go: named blobs behind a small trait.
//!
//! A [`Store`] keeps blobs under names (`put`, `get`, `delete`) and knows
//! nothing of what they hold, nor of files: the directory backend here
//! ([`DirStore`]) is the embedded default, and a distributed one plugs in
//! behind the same trait. Names are short and portable (see
//! [`check_name`]), so any backend can use them as keys.
//!
//! [`DirStore`] writes each blob whole or not at all: into a temporary file
//! beside it, flushed to disk, then renamed over the old one, and the
//! directory flushed, so a crash at any moment leaves the old blob or the
//! new one. Every file starts with a header holding the blob's length and
//! CRC-32, so a truncated or garbled file reads as
//! [`StoreErrorKind::Corrupt`], never as a blob.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// What a [`Store`]'s methods return.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Named blobs: the one thing checkpoints need from where they are kept.
///
/// A `put` replaces the blob whole (a reader never sees half of one); a
/// `get` of a name never put, or deleted, is `Ok(None)`. Object safe, so a
/// pool can hold any backend as `Arc<dyn Store>`.
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// Keeps `blob` under `name`, replacing what was there.
    fn put<'a>(&'a self, name: &'a str, blob: Bytes) -> StoreFuture<'a, ()>;
    /// The blob under `name`, if there is one.
    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Bytes>>;
    /// Forgets the blob under `name`; nothing to forget is no error.
    fn delete<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()>;
}

/// Whether this process still surely runs a shard, asked before each
/// write of the shard's checkpoint ([`PoolConfig::holding`]).
///
/// Where processes share a store and hand shards to each other (a
/// cluster's leases), a process paused past its lease could otherwise
/// wake and write its checkpoint over the one of the process that took the
/// shard meanwhile. A write goes ahead only while the answer is yes.
///
/// [`PoolConfig::holding`]: crate::PoolConfig::holding
pub trait Holding: fmt::Debug + Send + Sync + 'static {
    /// Whether shard `shard` is this process's for at least as long as a
    /// write takes.
    fn holds(&self, shard: u32) -> bool;
}

/// Why a store could not do what was asked.
#[derive(Debug)]
pub struct StoreError {
    name: String,
    kind: StoreErrorKind,
}

/// What went wrong in a store.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The name is not one a store accepts (see [`check_name`]).
    Name,
    /// The blob is there but damaged (truncated, garbled, or written by an
    /// unknown version): what was wrong.
    Corrupt(String),
    /// The backend failed.
    Io(io::Error),
}

impl StoreError {
    /// An error about blob `name`: for other backends of [`Store`].
    #[must_use]
    pub fn new(name: &str, kind: StoreErrorKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
        }
    }

    /// What went wrong.
    #[must_use]
    pub fn kind(&self) -> &StoreErrorKind {
        &self.kind
    }

    /// The name of the blob it was about.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name.escape_debug();
        match &self.kind {
            StoreErrorKind::Name => write!(
                f,
                "\"{name}\" is not a blob name: expected 1 to {MAX_NAME} of A-Z, a-z, 0-9, '-', '_' \
                 and '.', not starting with '.'"
            ),
            StoreErrorKind::Corrupt(why) => write!(f, "blob \"{name}\" is corrupt: {why}"),
            StoreErrorKind::Io(error) => write!(f, "blob \"{name}\": {error}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StoreErrorKind::Io(error) => Some(error),
            _ => None,
        }
    }
}

/// The longest name a store accepts.
pub const MAX_NAME: usize = 128;

/// Checks that `name` is one every backend can keep as it is: 1 to
/// [`MAX_NAME`] bytes of ASCII letters, digits, `-`, `_` and `.`, not
/// starting with `.` (so never `.`, `..` or a hidden file).
///
/// # Errors
///
/// [`StoreErrorKind::Name`] otherwise.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::new(name, StoreErrorKind::Name))
    }
}

/// The start of every file a [`DirStore`] writes.
const MAGIC: [u8; 4] = *b"GPBL";
/// The file format's version.
const VERSION: u16 = 1;
/// Magic, version, reserved (2 bytes), length (8), CRC-32 (4).
const HEADER: usize = 20;
/// Temporary files start with this (hidden: never a valid name).
const TEMP_PREFIX: &str = ".tmp-";

/// A [`Store`] in a directory: one file per blob, named as the blob.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), shard_pool::StoreError> {
/// use bytes::Bytes;
/// use shard_pool::{DirStore, Store};
///
/// let dir = std::env::temp_dir().join(format!("dirstore-doc-{}", std::process::id()));
/// let store = DirStore::open(&dir)?;
/// store.put("shard-0", Bytes::from_static(b"checkpoint")).await?;
/// assert_eq!(store.get("shard-0").await?.as_deref(), Some(&b"checkpoint"[..]));
/// store.delete("shard-0").await?;
/// assert_eq!(store.get("shard-0").await?, None);
/// # let _ = std::fs::remove_dir_all(dir);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct DirStore {
    inner: Arc<Dir>,
}

#[derive(Debug)]
struct Dir {
    path: PathBuf,
    /// Numbers temporary files, unique within the process.
    next_temp: AtomicU64,
}

impl DirStore {
    /// A store in `path`, created if missing. Temporary files a crash left
    /// behind are removed.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Io`] if the directory cannot be created or read.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let io = |error| StoreError::new(&path.display().to_string(), StoreErrorKind::Io(error));
        fs::create_dir_all(&path).map_err(io)?;
        for entry in fs::read_dir(&path).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                // Best effort: a leftover is never read as a blob anyway.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            inner: Arc::new(Dir {
                path,
                next_temp: AtomicU64::new(0),
            }),
        })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a blocking thread: file system calls (and `fsync`
    /// above all) must not hold up the runtime's workers.
    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&Dir) -> Result<T, StoreErrorKind> + Send + 'static,
    ) -> Result<T, StoreError> {
        check_name(name)?;
        let dir = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || f(&dir))
            .await
            .unwrap_or_else(|join| Err(StoreErrorKind::Io(io::Error::other(join))));
        result.map_err(|kind| StoreError::new(name, kind))
    }
}

impl Dir {
    fn write(&self, name: &str, blob: &[u8]) -> Result<(), StoreErrorKind> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .path
            .join(format!("{TEMP_PREFIX}{}-{n}-{name}", std::process::id()));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)?;
            file.write_all(&header(blob))?;
            file.write_all(blob)?;
            file.sync_all()?;
            fs::rename(&temp, self.path.join(name))?;
            self.sync()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written.map_err(StoreErrorKind::Io)
    }

    fn read(&self, name: &str) -> Result<Option<Bytes>, StoreErrorKind> {
        match fs::read(self.path.join(name)) {
            Ok(file) => unseal(file).map(Some).map_err(StoreErrorKind::Corrupt),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreErrorKind::Io(error)),
        }
    }

    fn remove(&self, name: &str) -> Result<(), StoreErrorKind> {
        match fs::remove_file(self.path.join(name)) {
            Ok(()) => self.sync().map_err(StoreErrorKind::Io),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StoreErrorKind::Io(error)),
        }
    }

    /// Flushes the directory itself, so that a rename or a removal
    /// survives a crash.
    fn sync(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

impl Store for DirStore {
    fn put<'a>(&'a self, name: &'a str, blob: Bytes) -> StoreFuture<'a, ()> {
        let owned = name.to_owned();
        Box::pin(self.blocking(name, move |dir| dir.write(&owned, &blob)))
    }

    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        let owned = name.to_owned();
        Box::pin(self.blocking(name, move |dir| dir.read(&owned)))
    }

    fn delete<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        let owned = name.to_owned();
        Box::pin(self.blocking(name, move |dir| dir.remove(&owned)))
    }
}

/// The header of a file holding `blob`.
fn header(blob: &[u8]) -> [u8; HEADER] {
    let mut header = [0; HEADER];
    header[..4].copy_from_slice(&MAGIC);
    header[4..6].copy_from_slice(&VERSION.to_le_bytes());
    header[8..16].copy_from_slice(&(blob.len() as u64).to_le_bytes());
    header[16..20].copy_from_slice(&crc32fast::hash(blob).to_le_bytes());
    header
}

/// The blob a file holds, if its header says it is whole.
fn unseal(file: Vec<u8>) -> Result<Bytes, String> {
    let Some((head, blob)) = file.split_first_chunk::<HEADER>() else {
        return Err(format!(
            "{} bytes, shorter than the {HEADER}-byte header",
            file.len()
        ));
    };
    if head[..4] != MAGIC {
        return Err("not a blob file (wrong magic)".to_owned());
    }
    let version = u16::from_le_bytes([head[4], head[5]]);
    if version != VERSION {
        return Err(format!(
            "format version {version}, this build reads {VERSION}"
        ));
    }
    let mut len = [0; 8];
    len.copy_from_slice(&head[8..16]);
    let len = u64::from_le_bytes(len);
    if len != blob.len() as u64 {
        return Err(format!(
            "the header says {len} bytes, the file holds {}",
            blob.len()
        ));
    }
    let crc = u32::from_le_bytes([head[16], head[17], head[18], head[19]]);
    if crc != crc32fast::hash(blob) {
        return Err("the checksum does not match".to_owned());
    }
    let mut file = Bytes::from(file);
    Ok(file.split_off(HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one, removed when
    /// dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "shard-pool-store-{test}-{}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn blobs_are_put_got_replaced_and_deleted() {
        let scratch = Scratch::new("roundtrip");
        let store: Arc<dyn Store> = Arc::new(DirStore::open(&scratch.0).unwrap());
        assert_eq!(store.get("shard-0").await.unwrap(), None);
        store
            .put("shard-0", Bytes::from_static(b"first"))
            .await
            .unwrap();
        assert_eq!(
            store.get("shard-0").await.unwrap().as_deref(),
            Some(&b"first"[..])
        );
        let big: Bytes = (0..1_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        store.put("shard-0", big.clone()).await.unwrap();
        assert_eq!(store.get("shard-0").await.unwrap(), Some(big));
        store.put("empty", Bytes::new()).await.unwrap();
        assert_eq!(store.get("empty").await.unwrap(), Some(Bytes::new()));
        store.delete("shard-0").await.unwrap();
        assert_eq!(store.get("shard-0").await.unwrap(), None);
        store.delete("shard-0").await.unwrap();
        // Only the blobs themselves are left in the directory.
        let mut files: Vec<String> = fs::read_dir(&scratch.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["empty"]);
    }

    #[tokio::test]
    async fn names_that_are_not_portable_are_refused() {
        let scratch = Scratch::new("names");
        let store = DirStore::open(&scratch.0).unwrap();
        let long = "a".repeat(MAX_NAME + 1);
        for name in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "é", "a b", &long,
        ] {
            let error = store.put(name, Bytes::new()).await.unwrap_err();
            assert!(matches!(error.kind(), StoreErrorKind::Name), "{name:?}");
            assert!(matches!(
                store.get(name).await.unwrap_err().kind(),
                StoreErrorKind::Name
            ));
            assert!(error.to_string().contains("is not a blob name"), "{error}");
        }
        check_name(&"a".repeat(MAX_NAME)).unwrap();
        check_name("manifest.v1").unwrap();
        assert_eq!(fs::read_dir(&scratch.0).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_truncated_or_garbled_file_is_corrupt_never_a_blob() {
        let scratch = Scratch::new("corrupt");
        let store = DirStore::open(&scratch.0).unwrap();
        let blob = Bytes::from_static(b"{\"session\":\"abc\",\"seq\":42,\"guilds\":[1,2,3]}");
        store.put("shard-3", blob.clone()).await.unwrap();
        let file = scratch.0.join("shard-3");
        let whole = fs::read(&file).unwrap();
        assert_eq!(whole.len(), HEADER + blob.len());
        // Every truncation, and every single bit flipped.
        let mut damaged: Vec<Vec<u8>> = (0..whole.len()).map(|n| whole[..n].to_vec()).collect();
        for i in 0..whole.len() {
            for bit in 0..8 {
                let mut flipped = whole.clone();
                flipped[i] ^= 1 << bit;
                // The reserved bytes are not checked.
                if !(6..8).contains(&i) {
                    damaged.push(flipped);
                }
            }
        }
        let mut longer = whole.clone();
        longer.push(0);
        damaged.push(longer);
        for bytes in damaged {
            fs::write(&file, &bytes).unwrap();
            let error = store.get("shard-3").await.unwrap_err();
            assert!(
                matches!(error.kind(), StoreErrorKind::Corrupt(_)),
                "{} bytes: {error}",
                bytes.len()
            );
            assert!(
                error
                    .to_string()
                    .starts_with("blob \"shard-3\" is corrupt: ")
            );
        }
        fs::write(&file, &whole).unwrap();
        assert_eq!(store.get("shard-3").await.unwrap(), Some(blob));
    }

    #[tokio::test]
    async fn temporary_files_a_crash_left_are_removed_and_never_read() {
        let scratch = Scratch::new("temp");
        fs::create_dir_all(&scratch.0).unwrap();
        let leftover = scratch.0.join(format!("{TEMP_PREFIX}123-0-shard-0"));
        fs::write(&leftover, b"half a blob").unwrap();
        let store = DirStore::open(&scratch.0).unwrap();
        assert!(!leftover.exists());
        assert_eq!(store.get("shard-0").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_directory_that_cannot_be_made_is_an_error_naming_it() {
        let scratch = Scratch::new("file");
        fs::write(&scratch.0, b"a file, not a directory").unwrap();
        let error = DirStore::open(scratch.0.join("state")).unwrap_err();
        assert!(matches!(error.kind(), StoreErrorKind::Io(_)));
        assert!(error.to_string().contains("state"), "{error}");
        let _ = fs::remove_file(&scratch.0);
    }
}
