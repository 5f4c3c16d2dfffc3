//! R2 as the index's procedures see it (`crate::core::index::passes::Bucket`).

use worker::Bucket;

use crate::core::index::passes::{self, Fetched, Listing, Object, StorageError};

pub struct R2<'a>(pub &'a Bucket);

fn storage(err: worker::Error) -> StorageError {
    StorageError(err.to_string())
}

impl passes::Bucket for R2<'_> {
    async fn list(
        &self,
        after: &str,
        limit: u32,
        top_level: bool,
    ) -> Result<Listing, StorageError> {
        let mut list = self.0.list().limit(limit);
        if top_level {
            list = list.delimiter("/");
        }
        if !after.is_empty() {
            list = list.start_after(after.to_owned());
        }
        let page = list.execute().await.map_err(storage)?;
        Ok(Listing {
            objects: page
                .objects()
                .iter()
                .map(|object| Object {
                    key: object.key(),
                    size: object.size(),
                    uploaded: object.uploaded().as_millis(),
                })
                .collect(),
            truncated: page.truncated(),
        })
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Fetched>, StorageError> {
        let Some(object) = self.0.get(key).execute().await.map_err(storage)? else {
            return Ok(None);
        };
        let uploaded = object.uploaded().as_millis();
        if object.size() > max_bytes {
            return Ok(Some(Fetched {
                bytes: None,
                uploaded,
            }));
        }
        let body = object
            .body()
            .ok_or_else(|| StorageError("R2 returned an object without a body".into()))?;
        Ok(Some(Fetched {
            bytes: Some(body.bytes().await.map_err(storage)?),
            uploaded,
        }))
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        match keys {
            [] => Ok(()),
            [key] => self.0.delete(key).await.map_err(storage),
            _ => self.0.delete_multiple(keys.to_vec()).await.map_err(storage),
        }
    }
}
