//! Helpers shared by the engine's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kv_domain::{BatchOp, Durability, Engine, KeyRange, WriteBatch};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::vfs::FileSystem;
use kv_infra_fs::{FsEngine, Options};

/// The reference model.
pub type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// Options over a simulated file system.
pub fn sim_options(fs: &SimFs, durability: Durability, segment_bytes: u64) -> Options {
    Options {
        durability,
        max_segment_bytes: segment_bytes,
        fs: Arc::new(fs.clone()) as Arc<dyn FileSystem>,
        ..Options::default()
    }
}

/// Every live pair of the engine, read page by page.
pub fn contents(engine: &dyn Engine) -> Model {
    let mut out = Model::new();
    let mut range = KeyRange::all();
    loop {
        let page = engine.scan(&range, 7).unwrap();
        let Some(last) = page.last() else { break };
        range = range.after(&last.key);
        for e in page {
            out.insert(e.key.into_bytes(), e.value.into_bytes());
        }
    }
    out
}

/// Applies a batch to the model.
pub fn apply_batch(model: &mut Model, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            BatchOp::Put { key, value } => {
                model.insert(key.to_vec(), value.to_vec());
            }
            BatchOp::Delete { key } => {
                model.remove(key.as_bytes());
            }
        }
    }
}

/// Opens `dir` on the real file system.
pub fn open_real(dir: &Path, durability: Durability, segment_bytes: u64) -> FsEngine {
    FsEngine::open(
        dir,
        Options {
            durability,
            max_segment_bytes: segment_bytes,
            ..Options::default()
        },
    )
    .unwrap()
}

/// Ids of the segment files on a simulated file system, ascending.
pub fn segment_ids(fs: &SimFs) -> Vec<u32> {
    let mut ids: Vec<u32> = fs
        .paths()
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()
                .and_then(kv_infra_fs::segment::parse_segment_name)
        })
        .collect();
    ids.sort_unstable();
    ids
}
