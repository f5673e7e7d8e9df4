//! `logo-engine sql`: DataFusion SQL over an output folder.
//!
//! The folder's Parquet files are registered as the table `samples`
//! ([`logo_schemas::training_schema`]); `rejects.jsonl` is not a table (read it with any JSON
//! tool). Example: `SELECT position_strategy, count(*) FROM samples GROUP BY 1`.

use std::path::Path;

use arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use crate::error::{EngineError, Result};

/// Name of the table the output is registered as.
pub const TABLE: &str = "samples";

/// Runs `query` over the Parquet files of `dir` and returns the result batches.
/// Errors: [`EngineError::Input`] naming the folder (no Parquet there, or a bad query).
pub fn query(dir: &Path, query: &str) -> Result<Vec<RecordBatch>> {
    let err = |m: String| EngineError::Input {
        path: dir.to_path_buf(),
        message: m,
    };
    let has_parquet = std::fs::read_dir(dir)
        .map_err(|e| EngineError::io(dir, e))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "parquet"));
    if !has_parquet {
        return Err(err("no .parquet files (run `logo-engine run` first)".into()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EngineError::Internal(format!("tokio runtime: {e}")))?;
    runtime.block_on(async {
        let ctx = SessionContext::new();
        let dir_str = format!("{}/", dir.display());
        ctx.register_parquet(TABLE, &dir_str, ParquetReadOptions::default())
            .await
            .map_err(|e| err(e.to_string()))?;
        let df = ctx.sql(query).await.map_err(|e| err(e.to_string()))?;
        df.collect().await.map_err(|e| err(e.to_string()))
    })
}

/// Formats batches as an ASCII table.
pub fn pretty(batches: &[RecordBatch]) -> Result<String> {
    Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}
