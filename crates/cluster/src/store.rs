//! Checkpoints in JetStream: the durable-sessions `Store` as an object
//! store, readable by every node.

use std::io;

use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use bytes::Bytes;
use shard_pool::{Store, StoreError, StoreErrorKind, StoreFuture, check_name};
use tokio::io::AsyncReadExt as _;

use crate::{Cluster, Error};

/// The chunk a blob is cut into: well under NATS's default 1 MiB message.
const CHUNK: usize = 512 << 10;

/// A [`Store`] in the cluster's JetStream object store `{name}-checkpoints`.
///
/// An object store keeps a blob as chunks and then one record naming them
/// and their SHA-256, which replaces the previous record whole: a reader
/// sees the old blob or the new one, and a blob whose chunks do not match
/// their digest reads as [`StoreErrorKind::Corrupt`]. With file storage
/// (the default) the blobs survive a restart of the NATS server; with
/// replicas, the loss of one.
#[derive(Clone)]
pub struct JetStreamStore {
    objects: ObjectStore,
    bucket: String,
}

impl std::fmt::Debug for JetStreamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl JetStreamStore {
    pub(crate) async fn open(cluster: &Cluster) -> Result<Self, Error> {
        let bucket = cluster.named("checkpoints");
        let config = object_store::Config {
            bucket: bucket.clone(),
            description: Some("gateway-proxy: shard checkpoints".to_owned()),
            storage: cluster.config().storage.of(),
            num_replicas: cluster.config().replicas,
            ..object_store::Config::default()
        };
        let objects = match cluster.jetstream().get_object_store(&bucket).await {
            Ok(objects) => objects,
            Err(_) => cluster
                .jetstream()
                .create_object_store(config)
                .await
                .map_err(|e| Error::nats(format!("creating the object store {bucket}"), e))?,
        };
        Ok(Self { objects, bucket })
    }

    /// The object store's name.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

fn failed(name: &str, error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::new(name, StoreErrorKind::Io(io::Error::other(error)))
}

/// How long a read may wait for its next chunk before it is taken to have
/// lost them to a rewrite.
const STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// How many times a stalled read is tried.
const READS: usize = 3;

fn stalled(error: &StoreError) -> bool {
    matches!(error.kind(), StoreErrorKind::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

impl JetStreamStore {
    /// One read of blob `name`; a read that stalls (no chunk for
    /// [`STALL`]) is a time-out error.
    async fn read(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let mut object = match self.objects.get(name).await {
            Ok(object) => object,
            Err(error) if error.kind() == object_store::GetErrorKind::NotFound => {
                return Ok(None);
            }
            Err(error) => return Err(failed(name, error)),
        };
        // The size is what the record says: a hint, capped. Read with
        // `read`, not `read_to_end`: the object's reader fills the buffer
        // before it finds a wrong digest, which `read_to_end` treats as a
        // broken reader (it panics).
        let mut blob = Vec::with_capacity(object.info().size.min(64 << 20));
        let mut chunk = vec![0; 64 << 10];
        loop {
            let read = tokio::time::timeout(STALL, object.read(&mut chunk))
                .await
                .map_err(|_| {
                    let stalled = io::Error::new(io::ErrorKind::TimedOut, "no chunk within 2 s");
                    StoreError::new(name, StoreErrorKind::Io(stalled))
                })?
                .map_err(|error| {
                    // The reader checks the chunks against the record's
                    // SHA-256 at the end.
                    if error.kind() == io::ErrorKind::InvalidData {
                        StoreError::new(name, StoreErrorKind::Corrupt(error.to_string()))
                    } else {
                        StoreError::new(name, StoreErrorKind::Io(error))
                    }
                })?;
            if read == 0 {
                break;
            }
            blob.extend_from_slice(&chunk[..read]);
        }
        Ok(Some(Bytes::from(blob)))
    }
}

impl Store for JetStreamStore {
    fn put<'a>(&'a self, name: &'a str, blob: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_name(name)?;
            let meta = ObjectMetadata {
                name: name.to_owned(),
                chunk_size: Some(CHUNK),
                ..ObjectMetadata::default()
            };
            let mut reader: &[u8] = &blob;
            self.objects
                .put(meta, &mut reader)
                .await
                .map_err(|e| failed(name, e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            check_name(name)?;
            // A blob replaced while it is read loses its old chunks (the
            // writer purges them once its new record is in): the read then
            // waits for chunks that will never come. It is read again,
            // from the new record.
            for _ in 1..READS {
                match self.read(name).await {
                    Err(error) if stalled(&error) => {}
                    done => return done,
                }
            }
            self.read(name).await
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_name(name)?;
            match self.objects.delete(name).await {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
                Err(error) => Err(failed(name, error)),
            }
        })
    }
}

/// A [`Store`] of small blobs in a JetStream key-value bucket whose
/// entries expire: where nodes hand each other client sessions
/// (`{name}-sessions`, see [`Cluster::sessions`]). A value is one message,
/// so a blob must stay under NATS's message size (1 MiB by default).
#[derive(Clone)]
pub struct KvStore {
    kv: kv::Store,
    bucket: String,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl KvStore {
    pub(crate) async fn open(
        cluster: &Cluster,
        what: &str,
        max_age: std::time::Duration,
    ) -> Result<Self, Error> {
        let description = format!("gateway-proxy: {what}, each kept {} s", max_age.as_secs());
        let kv = cluster.key_value(what, description, max_age).await?;
        let bucket = cluster.named(what);
        Ok(Self { kv, bucket })
    }

    /// The bucket's name.
    #[must_use]
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

impl Store for KvStore {
    fn put<'a>(&'a self, name: &'a str, blob: Bytes) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_name(name)?;
            self.kv.put(name, blob).await.map_err(|e| failed(name, e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            check_name(name)?;
            self.kv.get(name).await.map_err(|e| failed(name, e))
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_name(name)?;
            self.kv.purge(name).await.map_err(|e| failed(name, e))
        })
    }
}
