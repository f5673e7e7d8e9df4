//! Replay cache: completed generations kept next to the output (`OUT/cache/`), so that a
//! rerun after a crash generates only what had not finished.
//!
//! Key: the SHA-256 (FIPS 180-4) of the JSON `{"model", "prompt", "max_new_tokens",
//! "temperature", "top_p", "min_new_tokens", "seed"}`, where `model` identifies the weights
//! (the GGUF's SHA-256, the adapter's and the in-memory weight format, see
//! [`crate::pipeline`]) and `prompt` is the prompt's token ids. Two requests with the same key
//! give the same tokens (the policy is deterministic given prompt, weights and seed), so a
//! replayed generation is the one the model would write again.
//!
//! Storage: JSON Lines, one completed generation per line (`key`, `token_ids`, `text`,
//! `stopped_on_eos`, `prompt_tokens`), appended, flushed and `fdatasync`ed before the
//! generation is used, so an entry is either whole on disk or absent. A torn last line (a kill
//! while appending) is ignored when read, and cut off the file this process appends to. Each
//! shard appends to its own file (`generations-I-of-N.jsonl`) and reads them all.
//! Timings (`prefill_seconds`, `decode_seconds`) are not kept: a replayed generation has 0.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::model::{GenerateOptions, Generation};

/// Folder of the cache inside the output folder.
pub const CACHE_DIR: &str = "cache";

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    token_ids: Vec<u32>,
    text: String,
    stopped_on_eos: bool,
    prompt_tokens: usize,
}

/// The cache of one run (see the module doc). Shared by the stages that generate.
pub struct ReplayCache {
    model: String,
    path: PathBuf,
    entries: Mutex<HashMap<String, Generation>>,
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

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
                if let Ok(e) = serde_json::from_slice::<Entry>(&line) {
                    entries.insert(
                        e.key,
                        Generation {
                            token_ids: e.token_ids,
                            text: e.text,
                            stopped_on_eos: e.stopped_on_eos,
                            prompt_tokens: e.prompt_tokens,
                            prefill_seconds: 0.0,
                            decode_seconds: 0.0,
                        },
                    );
                }
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
        hex(&Sha256::digest(json.to_string().as_bytes()))
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

    /// The cached generation of (`prompt`, `opts`), or `generate()`'s, stored durably before
    /// it is returned. Errors: `generate`'s, [`EngineError::Io`] when the entry cannot be
    /// written.
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        generate: impl FnOnce() -> Result<Generation>,
    ) -> Result<Generation> {
        let key = self.key(prompt, opts);
        if let Some(g) = self.entries.lock().expect("cache lock").get(&key) {
            self.replayed.fetch_add(1, Ordering::Relaxed);
            return Ok(g.clone());
        }
        let g = generate()?;
        let entry = Entry {
            key: key.clone(),
            token_ids: g.token_ids.clone(),
            text: g.text.clone(),
            stopped_on_eos: g.stopped_on_eos,
            prompt_tokens: g.prompt_tokens,
        };
        let mut line = serde_json::to_vec(&entry).expect("entry serialises");
        line.push(b'\n');
        {
            let mut out = self.out.lock().expect("cache lock");
            out.write_all(&line)
                .and_then(|()| out.flush())
                .and_then(|()| out.sync_data())
                .map_err(|e| EngineError::io(&self.path, e))?;
        }
        self.entries
            .lock()
            .expect("cache lock")
            .insert(key, g.clone());
        self.generated.fetch_add(1, Ordering::Relaxed);
        Ok(g)
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

    fn generation(ids: &[u32]) -> Generation {
        Generation {
            token_ids: ids.to_vec(),
            text: format!("{ids:?}"),
            stopped_on_eos: true,
            prompt_tokens: 3,
            prefill_seconds: 0.5,
            decode_seconds: 0.5,
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let opts = GenerateOptions::greedy(4);
        let c = ReplayCache::open(dir.path(), "generations-0-of-1.jsonl", "m").unwrap();
        let g = c
            .generate(&[1, 2, 3], &opts, || Ok(generation(&[7, 8])))
            .unwrap();
        assert_eq!(g.token_ids, vec![7, 8]);
        // Second call: replayed, the closure is not run.
        let again = c
            .generate(&[1, 2, 3], &opts, || panic!("must be replayed"))
            .unwrap();
        assert_eq!(again.token_ids, vec![7, 8]);
        assert_eq!(again.prefill_seconds, 0.5); // same process: the stored value
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
            .generate(&[1, 2, 3], &opts, || panic!("must be replayed"))
            .unwrap();
        assert_eq!((g.token_ids.clone(), g.decode_seconds), (vec![7, 8], 0.0));
        c.generate(&[4], &opts, || Ok(generation(&[9]))).unwrap();
        drop(c);
        // The torn tail was cut: the file is two whole lines.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.ends_with('\n'));
        // A different model never replays another's generations.
        let c = ReplayCache::open(dir.path(), "generations-0-of-1.jsonl", "other").unwrap();
        let g = c
            .generate(&[1, 2, 3], &opts, || Ok(generation(&[5])))
            .unwrap();
        assert_eq!(g.token_ids, vec![5]);
        // Entries written by another shard's file are read too.
        let c = ReplayCache::open(dir.path(), "generations-1-of-2.jsonl", "m").unwrap();
        assert_eq!(c.len(), 3);
        c.generate(&[4], &opts, || panic!("replayed from shard 0's file"))
            .unwrap();
    }
}
