//! Replay cache: completed generations kept next to the output (`OUT/cache/`), so that a
//! rerun after a crash generates only what had not finished.
//!
//! The cache sits in front of any [`GenerationBackend`] ([`Replaying`]), so both backends
//! (in process and a server) are paid for once: with a server, a rerun after a crash sends
//! only the requests that had not finished.
//!
//! Key: the SHA-256 (FIPS 180-4) of the JSON `{"model", "prompt", "max_new_tokens",
//! "temperature", "top_p", "min_new_tokens", "seed"}`, where `model` identifies the model
//! (the weights' SHA-256 in process, the served model's name and logo's tokenizer files for a
//! server; see [`crate::pipeline::model_identity`]) and `prompt` is the prompt's token ids.
//! Two requests with the same key give the same tokens (greedy, or seeded sampling), so a
//! replayed generation is the one the model would write again.
//!
//! Storage: JSON Lines, one completed generation per line (`key`, `token_ids`, `text`,
//! `finish_reason`, `stop_token_id`, `model`), appended, flushed and `fdatasync`ed before the
//! generation is used, so an entry is either whole on disk or absent. `stop_token_id` is a
//! number, or `null` for `length` and for a stop the server did not identify; a `stop` entry
//! without the key (written before logo recorded stop ids) is not replayed: its stop token is
//! unknown, so the request is sent again. A torn last line (a kill while
//! appending) is ignored when read, and cut off the file this process appends to. Each shard
//! appends to its own file (`generations-I-of-N.jsonl`) and reads them all. A replayed
//! completion has `retries` 0 (the retries were counted by the run that paid for them).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use logo_policy::backend::{Completion, FinishReason, GenerationBackend};
use logo_policy::PolicyError;

use crate::error::{EngineError, Result};
use logo_policy::model::GenerateOptions;

/// Folder of the cache inside the output folder.
pub const CACHE_DIR: &str = "cache";

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    token_ids: Vec<u32>,
    text: String,
    /// `"stop"` or `"length"`.
    finish_reason: String,
    /// The stop token ([`Completion::stop_token_id`]): `Some(id)`, `Some(None)` for an
    /// explicit `null`, `None` when the key is absent (an entry of an older logo).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    stop_token_id: Option<Option<u32>>,
    model: String,
}

/// Deserialises a key that is present (a value or `null`) as `Some`, so that an absent key
/// (the field's default) stays `None`.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// The cache of one run (see the module doc). Shared by the stages that generate.
pub struct ReplayCache {
    model: String,
    path: PathBuf,
    entries: Mutex<HashMap<String, Completion>>,
    out: Mutex<File>,
    replayed: AtomicU64,
    generated: AtomicU64,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache")
            .field("path", &self.path)
            .field("replayed", &self.replayed())
            .field("generated", &self.generated())
            .finish_non_exhaustive()
    }
}

impl ReplayCache {
    /// Opens `dir` (created), reads every `*.jsonl` in it, and opens `dir/{file_name}` for
    /// appending (cutting a torn last line). `model`: the identity of the weights, part of
    /// every key. Errors: [`EngineError::Io`] naming the file.
    pub fn open(dir: &Path, file_name: &str, model: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
        let path = dir.join(file_name);
        let mut entries = HashMap::new();
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| EngineError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        names.sort();
        for p in &names {
            let f = File::open(p).map_err(|e| EngineError::io(p, e))?;
            for line in BufReader::new(f).split(b'\n') {
                let line = line.map_err(|e| EngineError::io(p, e))?;
                // A torn line (killed while appending) does not parse: it was never used.
                let Ok(e) = serde_json::from_slice::<Entry>(&line) else {
                    continue;
                };
                let (finish_reason, stop_token_id) =
                    match (e.finish_reason.as_str(), e.stop_token_id) {
                        ("stop", Some(id)) => (FinishReason::Stop, id),
                        // Written before stop ids were recorded: which token ended it is unknown.
                        ("stop", None) => continue,
                        ("length", _) => (FinishReason::Length, None),
                        _ => continue,
                    };
                entries.insert(
                    e.key,
                    Completion {
                        token_ids: e.token_ids,
                        text: e.text,
                        finish_reason,
                        stop_token_id,
                        model: e.model,
                        retries: 0,
                    },
                );
            }
        }
        let mut out = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| EngineError::io(&path, e))?;
        cut_torn_tail(&mut out).map_err(|e| EngineError::io(&path, e))?;
        Ok(Self {
            model: model.to_string(),
            path,
            entries: Mutex::new(entries),
            out: Mutex::new(out),
            replayed: AtomicU64::new(0),
            generated: AtomicU64::new(0),
        })
    }

    /// The key of a request (see the module doc): 64 hex digits.
    pub fn key(&self, prompt: &[u32], opts: &GenerateOptions) -> String {
        let json = serde_json::json!({
            "model": self.model,
            "prompt": prompt,
            "max_new_tokens": opts.max_new_tokens,
            "temperature": opts.temperature,
            "top_p": opts.top_p,
            "min_new_tokens": opts.min_new_tokens,
            "seed": opts.seed,
        });
        format!("{:x}", Sha256::digest(json.to_string().as_bytes()))
    }

    /// Entries held (read at open plus written since).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Generations answered from the cache by this process.
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Generations computed (and stored) by this process.
    pub fn generated(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    /// The cached completion of (`prompt`, `opts`), or `generate()`'s, stored durably before
    /// it is returned (the lock is not held while `generate` runs, so many requests can be in
    /// flight). Errors: `generate`'s, [`PolicyError::Io`] when the entry cannot be written.
    pub fn complete(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        generate: impl FnOnce() -> logo_policy::Result<Completion>,
    ) -> logo_policy::Result<Completion> {
        let key = self.key(prompt, opts);
        if let Some(g) = self.entries.lock().expect("cache lock").get(&key) {
            self.replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(Completion {
                retries: 0,
                ..g.clone()
            });
        }
        let g = generate()?;
        let entry = Entry {
            key: key.clone(),
            token_ids: g.token_ids.clone(),
            text: g.text.clone(),
            finish_reason: g.finish_reason.as_str().to_string(),
            stop_token_id: Some(g.stop_token_id),
            model: g.model.clone(),
        };
        let mut line = serde_json::to_vec(&entry).expect("entry serialises");
        line.push(b'\n');
        {
            let mut out = self.out.lock().expect("cache lock");
            out.write_all(&line)
                .and_then(|()| out.flush())
                .and_then(|()| out.sync_data())
                .map_err(|e| PolicyError::io(&self.path, e))?;
        }
        self.entries
            .lock()
            .expect("cache lock")
            .insert(key, g.clone());
        self.generated.fetch_add(1, Ordering::Relaxed);
        Ok(g)
    }
}

/// A [`GenerationBackend`] answered from a [`ReplayCache`] where it holds the request, and by
/// `inner` otherwise (the new completion stored first).
#[derive(Debug)]
pub struct Replaying {
    inner: Arc<dyn GenerationBackend>,
    cache: Arc<ReplayCache>,
}

impl Replaying {
    /// `inner` behind `cache`.
    pub fn new(inner: Arc<dyn GenerationBackend>, cache: Arc<ReplayCache>) -> Self {
        Self { inner, cache }
    }
}

impl GenerationBackend for Replaying {
    /// [`ReplayCache::complete`] over `inner`. Errors: `inner`'s, [`PolicyError::Io`].
    fn complete(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
    ) -> logo_policy::Result<Completion> {
        self.cache
            .complete(prompt_ids, opts, || self.inner.complete(prompt_ids, opts))
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn max_positions(&self) -> usize {
        self.inner.max_positions()
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight()
    }

    fn describe(&self) -> serde_json::Value {
        self.inner.describe()
    }
}

/// Truncates `f` after its last `\n` (a torn last line is dropped).
fn cut_torn_tail(f: &mut File) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Read backwards in blocks to the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 4096];
    loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        std::io::Read::read_exact(f, &mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep != len {
                f.set_len(keep)?;
            }
            return Ok(());
        }
        if start == 0 {
            return f.set_len(0);
        }
        end = start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(ids: &[u32]) -> Completion {
        Completion {
            token_ids: ids.to_vec(),
            text: format!("{ids:?}"),
            finish_reason: FinishReason::Length,
            stop_token_id: None,
            model: "served".into(),
            retries: 2,
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let opts = GenerateOptions::greedy(4);
        let c = ReplayCache::open(dir.path(), "generations-0-of-1.jsonl", "m").unwrap();
        let g = c
            .complete(&[1, 2, 3], &opts, || Ok(generation(&[7, 8])))
            .unwrap();
        assert_eq!(g.token_ids, vec![7, 8]);
        // Second call: replayed, the closure is not run.
        let again = c
            .complete(&[1, 2, 3], &opts, || panic!("must be replayed"))
            .unwrap();
        assert_eq!(again.token_ids, vec![7, 8]);
        // Replayed: no retries of its own; the rest as generated.
        assert_eq!(
            again,
            Completion {
                retries: 0,
                ..generation(&[7, 8])
            }
        );
        assert_eq!((c.generated(), c.replayed()), (1, 1));
        // Another seed is another request.
        let other = GenerateOptions {
            seed: 1,
            ..opts.clone()
        };
        assert_ne!(c.key(&[1, 2, 3], &opts), c.key(&[1, 2, 3], &other));
        assert_eq!(c.key(&[1, 2, 3], &opts).len(), 64);
        drop(c);
        // A kill while appending leaves half a line.
        let path = dir.path().join("generations-0-of-1.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"key": "abc", "token_ids": [1"#).unwrap();
        drop(f);
        let c = ReplayCache::open(dir.path(), "generations-0-of-1.jsonl", "m").unwrap();
        assert_eq!(c.len(), 1);
        let g = c
            .complete(&[1, 2, 3], &opts, || panic!("must be replayed"))
            .unwrap();
        assert_eq!(
            g,
            Completion {
                retries: 0,
                ..generation(&[7, 8])
            }
        );
        c.complete(&[4], &opts, || Ok(generation(&[9]))).unwrap();
        drop(c);
        // The torn tail was cut: the file is two whole lines.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with('\n'));
        // A different model never replays another's generations.
        let c = ReplayCache::open(dir.path(), "generations-0-of-1.jsonl", "other").unwrap();
        let g = c
            .complete(&[1, 2, 3], &opts, || Ok(generation(&[5])))
            .unwrap();
        assert_eq!(g.token_ids, vec![5]);
        // Entries written by another shard's file are read too.
        let c = ReplayCache::open(dir.path(), "generations-1-of-2.jsonl", "m").unwrap();
        assert_eq!(c.len(), 3);
        c.complete(&[4], &opts, || panic!("replayed from shard 0's file"))
            .unwrap();
    }

    /// The stop id survives a reopen (a number, or `null` for a stop the server did not
    /// identify); a `stop` entry of an older logo, without `stop_token_id`, is not replayed
    /// (its stop token is unknown), a `length` one is.
    #[test]
    fn the_stop_id_is_replayed_and_old_stop_entries_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let opts = GenerateOptions::greedy(4);
        let stopped = |id: Option<u32>| Completion {
            finish_reason: FinishReason::Stop,
            stop_token_id: id,
            retries: 0,
            ..generation(&[7])
        };
        let c = ReplayCache::open(dir.path(), "generations-0-of-1.jsonl", "m").unwrap();
        c.complete(&[1], &opts, || Ok(stopped(Some(0)))).unwrap();
        c.complete(&[2], &opts, || Ok(stopped(None))).unwrap();
        let (old_stop, old_length) = (c.key(&[3], &opts), c.key(&[4], &opts));
        drop(c);
        let path = dir.path().join("generations-0-of-1.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(
            f,
            r#"{{"key":"{old_stop}","token_ids":[7],"text":"x","finish_reason":"stop","model":"served"}}"#
        )
        .unwrap();
        writeln!(
            f,
            r#"{{"key":"{old_length}","token_ids":[7],"text":"x","finish_reason":"length","model":"served"}}"#
        )
        .unwrap();
        drop(f);
        let c = ReplayCache::open(dir.path(), "generations-0-of-1.jsonl", "m").unwrap();
        assert_eq!(c.len(), 3);
        let replayed = |p: &[u32]| c.complete(p, &opts, || panic!("must be replayed")).unwrap();
        assert_eq!(replayed(&[1]), stopped(Some(0)));
        assert_eq!(replayed(&[2]), stopped(None));
        assert_eq!(replayed(&[4]).stop_token_id, None);
        let again = c.complete(&[3], &opts, || Ok(stopped(Some(2)))).unwrap();
        assert_eq!(again.stop_token_id, Some(2));
        assert_eq!(c.generated(), 1);
    }
}
