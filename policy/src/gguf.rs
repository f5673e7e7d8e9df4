//! Opening a GGUF file: its header (metadata and tensor table) read by candle's `gguf_file`
//! (format: github.com/ggml-org/ggml `docs/gguf.md`). A leaf module: the policy, the
//! tokenizer and the chat template all read model headers through it.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file;

use crate::error::{PolicyError, Result};

/// Opens a GGUF and reads its header; the reader is left positioned for tensor reads.
/// Errors: [`PolicyError::Io`] (unreadable file), [`PolicyError::Model`] naming the file (not a
/// GGUF, a truncated or malformed header).
pub fn read_gguf(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let file = File::open(path).map_err(|e| PolicyError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|e| PolicyError::Model(format!("{}: reading GGUF: {e}", path.display())))?;
    Ok((content, reader))
}
