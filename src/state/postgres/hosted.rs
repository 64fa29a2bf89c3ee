//! The hosted registry's index in the PostgreSQL store (the tables of migration 3).
//! NOT BUILT YET: every call fails as unavailable (being written in this session).

use std::time::SystemTime;

use super::PostgresStore;
use crate::state::hosted::{GcDeleted, GcRepo, HostedIndex, ManifestRow, NewManifest, PutManifest};
use crate::state::{Fut, StateError};

fn todo<'a, T: Send + 'a>() -> Fut<'a, T> {
    Box::pin(async {
        Err(StateError::Unavailable(
            "the hosted registry on PostgreSQL is not built yet".into(),
        ))
    })
}

impl HostedIndex for PostgresStore {
    fn link_blob<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str, _: u64) -> Fut<'a, ()> {
        todo()
    }
    fn blob<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Fut<'a, Option<u64>> {
        todo()
    }
    fn unlink_blob<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Fut<'a, bool> {
        todo()
    }
    fn linked_anywhere<'a>(&'a self, _: &'a str) -> Fut<'a, bool> {
        todo()
    }
    fn put_manifest<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a NewManifest,
    ) -> Fut<'a, PutManifest> {
        todo()
    }
    fn manifest<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Fut<'a, Option<ManifestRow>> {
        todo()
    }
    fn tagged<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Fut<'a, Option<ManifestRow>> {
        todo()
    }
    fn repo_exists<'a>(&'a self, _: &'a str, _: &'a str) -> Fut<'a, bool> {
        todo()
    }
    fn tags<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Option<&'a str>,
        _: usize,
    ) -> Fut<'a, Vec<String>> {
        todo()
    }
    fn delete_manifest<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Fut<'a, bool> {
        todo()
    }
    fn delete_tag<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Fut<'a, bool> {
        todo()
    }
    fn referrers<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> Fut<'a, Vec<ManifestRow>> {
        todo()
    }
    fn catalog<'a>(
        &'a self,
        _: Option<&'a [String]>,
        _: Option<&'a str>,
        _: usize,
    ) -> Fut<'a, Vec<String>> {
        todo()
    }
    fn app_bytes<'a>(&'a self, _: &'a str) -> Fut<'a, u64> {
        todo()
    }
    fn hosted_blobs(&self) -> Fut<'_, Vec<(String, u64)>> {
        todo()
    }
    fn gc_repos<'a>(&'a self, _: Option<&'a str>) -> Fut<'a, Vec<GcRepo>> {
        todo()
    }
    fn gc_delete<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a [String],
        _: &'a [String],
        _: SystemTime,
    ) -> Fut<'a, GcDeleted> {
        todo()
    }
}
