//! Streaming the engine's Parquet training samples into LOGO batches.
//!
//! [`TrainingData::open`] checks every file of `--data DIR` before training starts: the schema
//! version in the Parquet key-value metadata and the columns the trainer reads
//! ([`logo_schemas::training_schema`]); errors name the file and the column. Training then
//! reads one row group at a time (never the whole set), passes rows through a seeded shuffle
//! buffer, and [`collate`] turns B samples into `B·(M+1)` sequences `prompt ⧺ response`,
//! the responses continuing the prompt's synthetic position ids (last prompt id + 1, + 2, ...).
//! Logits are needed only at the rows that predict response tokens: the batch carries their
//! flat indices.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt32Type;
use logo_schemas::{check_columns, check_schema_version, col, training_schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tch::{Device, Kind, Tensor};

use crate::error::{Result, TrainerError};

mod stream;
pub use stream::ExampleStream;

/// Columns the trainer reads.
const COLUMNS: [&str; 6] = [
    col::SAMPLE_ID,
    col::PROMPT_INPUT_IDS,
    col::PROMPT_POSITION_IDS,
    col::POSITION_STRATEGY,
    col::CHOSEN_INPUT_IDS,
    col::REJECTED_INPUT_IDS,
];

/// One training sample as the trainer sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// `sample_id` of the engine.
    pub sample_id: String,
    /// [P] prompt token ids.
    pub prompt_ids: Vec<i64>,
    /// [P] synthetic position ids of the prompt (strictly increasing, except for rows whose
    /// `position_strategy` is `paper`: Eq. 4 as printed, whose ids may go back between
    /// segments).
    pub prompt_positions: Vec<i64>,
    /// [|y_w|] preferred response ids (end-of-turn included).
    pub chosen_ids: Vec<i64>,
    /// [M][|y_l|] dis-preferred response ids.
    pub rejected_ids: Vec<Vec<i64>>,
}

impl Example {
    /// Real tokens of the M + 1 sequences of this sample.
    pub fn tokens(&self) -> usize {
        let p = self.prompt_ids.len();
        (p + self.chosen_ids.len()) + self.rejected_ids.iter().map(|r| p + r.len()).sum::<usize>()
    }
}

/// One Parquet row group to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroupRef {
    /// The file.
    pub path: PathBuf,
    /// Row group index in the file.
    pub index: usize,
    /// Rows in it.
    pub rows: usize,
}

/// The checked files of a data folder and their row groups.
#[derive(Debug, Clone)]
pub struct TrainingData {
    row_groups: Vec<RowGroupRef>,
    num_negatives: usize,
}

impl TrainingData {
    /// Lists and checks the `*.parquet` files of `dir` (sorted by name), and reads M from the
    /// first row. Errors: [`TrainerError::Input`] naming the file (no Parquet file, wrong or
    /// missing schema version, missing or mistyped column, page headers that declare sizes
    /// the file cannot hold ([`logo_formats::parquet_pages`]), no rows).
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| TrainerError::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(TrainerError::Input {
                path: dir.to_path_buf(),
                message: "no .parquet files (run `logo-engine run` first)".into(),
            });
        }
        let required = training_schema();
        let required = required.project(
            &COLUMNS
                .iter()
                .map(|c| required.index_of(c).expect("training column"))
                .collect::<Vec<_>>(),
        )?;
        let mut row_groups = Vec::new();
        for path in &files {
            let input = |message: String| TrainerError::Input {
                path: path.clone(),
                message,
            };
            let file = File::open(path).map_err(|e| TrainerError::io(path, e))?;
            let len = file
                .metadata()
                .map_err(|e| TrainerError::io(path, e))?
                .len();
            let clone = file.try_clone().map_err(|e| TrainerError::io(path, e))?;
            // The parquet crate panics on some corrupt footers (see logo_env::guard), and
            // allocates the sizes page headers declare: those are checked first.
            let builder =
                logo_env::guard::catch_panic(|| ParquetRecordBatchReaderBuilder::try_new(clone))
                    .map_err(|p| {
                        input(format!(
                            "not a readable Parquet file (the reader panicked: {p})"
                        ))
                    })?
                    .map_err(|e| input(format!("not a readable Parquet file: {e}")))?;
            logo_formats::parquet_pages::check_declared_sizes(&file, len, builder.metadata())
                .map_err(|m| input(format!("declares sizes it cannot hold: {m}")))?;
            let kv = logo_formats::parquet_pages::key_value_metadata(builder.metadata());
            check_schema_version(&kv).map_err(|e| input(e.to_string()))?;
            check_columns("training", &required, builder.schema())
                .map_err(|e| input(e.to_string()))?;
            for (index, rg) in builder.metadata().row_groups().iter().enumerate() {
                row_groups.push(RowGroupRef {
                    path: path.clone(),
                    index,
                    rows: rg.num_rows() as usize,
                });
            }
        }
        let first = row_groups
            .iter()
            .find(|r| r.rows > 0)
            .ok_or_else(|| TrainerError::Input {
                path: dir.to_path_buf(),
                message: "the Parquet files hold no rows".into(),
            })?;
        let num_negatives = read_row_group(first)?
            .first()
            .map(|e| e.rejected_ids.len())
            .unwrap_or(0);
        Ok(Self {
            row_groups,
            num_negatives,
        })
    }

    /// All row groups, in file order.
    pub fn row_groups(&self) -> &[RowGroupRef] {
        &self.row_groups
    }

    /// Rows in all files.
    pub fn num_rows(&self) -> usize {
        self.row_groups.iter().map(|r| r.rows).sum()
    }

    /// M, read from the first row.
    pub fn num_negatives(&self) -> usize {
        self.num_negatives
    }
}

/// Reads and checks the rows of one row group. Errors: [`TrainerError::Input`] naming the
/// file, row (1-based in the file is not tracked across groups: the row group and the
/// `sample_id` are named) and field: an empty prompt or response, positions that differ in
/// length from the prompt or do not increase (rows not marked `paper`), a sample whose M differs from the first.
pub fn read_row_group(rg: &RowGroupRef) -> Result<Vec<Example>> {
    let input = |message: String| TrainerError::Input {
        path: rg.path.clone(),
        message,
    };
    let file = File::open(&rg.path).map_err(|e| TrainerError::io(&rg.path, e))?;
    let panicked = |p: String| input(format!("the Parquet reader panicked: {p}"));
    let mut reader = logo_env::guard::catch_panic(|| {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let mask = parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), COLUMNS);
        builder
            .with_row_groups(vec![rg.index])
            .with_projection(mask)
            .build()
    })
    .map_err(panicked)??;
    let mut out = Vec::with_capacity(rg.rows);
    while let Some(batch) = logo_env::guard::catch_panic(|| reader.next()).map_err(panicked)? {
        let batch = batch?;
        let rows = examples_from_batch(&batch)
            .map_err(|m| input(format!("row group {}: {m}", rg.index)))?;
        out.extend(rows);
    }
    Ok(out)
}

fn u32_list(batch: &RecordBatch, name: &str, row: usize) -> std::result::Result<Vec<i64>, String> {
    let c = batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column {name}"))?;
    let list = c
        .as_list_opt::<i32>()
        .ok_or_else(|| format!("column {name}: expected List<UInt32>"))?;
    let values = list.value(row);
    let v = values
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| format!("column {name}: expected List<UInt32>"))?;
    Ok(v.values().iter().map(|&x| x as i64).collect())
}

fn examples_from_batch(batch: &RecordBatch) -> std::result::Result<Vec<Example>, String> {
    let ids = batch
        .column_by_name(col::SAMPLE_ID)
        .and_then(|c| c.as_string_opt::<i32>().cloned())
        .ok_or("column sample_id: expected Utf8")?;
    let rejected_col = batch
        .column_by_name(col::REJECTED_INPUT_IDS)
        .and_then(|c| c.as_list_opt::<i32>().cloned())
        .ok_or("column rejected_input_ids: expected List<List<UInt32>>")?;
    let strategies = batch
        .column_by_name(col::POSITION_STRATEGY)
        .and_then(|c| c.as_string_opt::<i32>().cloned());
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let sample_id = ids.value(row).to_string();
        let bad = |field: &str, m: &str| format!("sample {sample_id}: field {field}: {m}");
        let prompt_ids = u32_list(batch, col::PROMPT_INPUT_IDS, row)?;
        let prompt_positions = u32_list(batch, col::PROMPT_POSITION_IDS, row)?;
        let chosen_ids = u32_list(batch, col::CHOSEN_INPUT_IDS, row)?;
        if prompt_ids.is_empty() {
            return Err(bad(col::PROMPT_INPUT_IDS, "empty prompt"));
        }
        if prompt_positions.len() != prompt_ids.len() {
            return Err(bad(
                col::PROMPT_POSITION_IDS,
                &format!(
                    "{} ids for a prompt of {}",
                    prompt_positions.len(),
                    prompt_ids.len()
                ),
            ));
        }
        let paper = strategies.as_ref().is_some_and(|s| s.value(row) == "paper");
        if !paper && prompt_positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad(col::PROMPT_POSITION_IDS, "not strictly increasing"));
        }
        if chosen_ids.is_empty() {
            return Err(bad(col::CHOSEN_INPUT_IDS, "empty response"));
        }
        let inner = rejected_col.value(row);
        let inner = inner
            .as_list_opt::<i32>()
            .ok_or("column rejected_input_ids: expected List<List<UInt32>>")?;
        if inner.is_empty() {
            return Err(bad(col::REJECTED_INPUT_IDS, "no rejected response (M = 0)"));
        }
        let mut rejected_ids = Vec::with_capacity(inner.len());
        for j in 0..inner.len() {
            let v = inner.value(j);
            let v = v
                .as_primitive_opt::<UInt32Type>()
                .ok_or("column rejected_input_ids: expected List<List<UInt32>>")?;
            if v.is_empty() {
                return Err(bad(
                    col::REJECTED_INPUT_IDS,
                    &format!("rejected response {j} is empty"),
                ));
            }
            rejected_ids.push(v.values().iter().map(|&x| x as i64).collect());
        }
        out.push(Example {
            sample_id,
            prompt_ids,
            prompt_positions,
            chosen_ids,
            rejected_ids,
        });
    }
    Ok(out)
}

/// A collated LOGO batch: B samples → S = B·(M+1) right-padded sequences. Sequence
/// `b·(M+1)` is sample b's chosen response, `b·(M+1) + 1 + j` its rejected response j.
#[derive(Debug)]
pub struct Batch {
    /// [S, T] i64 token ids (padding 0).
    pub input_ids: Tensor,
    /// [S, T] i64 position ids: the prompt's synthetic ids, then last + 1, + 2, ... .
    pub position_ids: Tensor,
    /// [N] i64 flat indices `s·T + t` of the rows whose logits predict a response token.
    pub gather_index: Tensor,
    /// [N] i64 the response token each gathered row predicts.
    pub labels: Tensor,
    /// [N] i64 the sequence of each gathered row.
    pub sequence: Tensor,
    /// B.
    pub num_samples: usize,
    /// M.
    pub num_negatives: usize,
    /// Real tokens (no padding) in the batch.
    pub tokens: usize,
}

/// Builds the [`Batch`] of `examples` (all with the same M ≥ 1) on `device`.
/// Errors: [`TrainerError::Internal`] for an empty batch or mixed M.
pub fn collate(examples: &[Example], device: Device) -> Result<Batch> {
    let m = examples
        .first()
        .map(|e| e.rejected_ids.len())
        .ok_or_else(|| TrainerError::Internal("collate: empty batch".into()))?;
    if examples.iter().any(|e| e.rejected_ids.len() != m) {
        return Err(TrainerError::Internal(
            "collate: samples with different M".into(),
        ));
    }
    let seqs: Vec<(&Example, &Vec<i64>)> = examples
        .iter()
        .flat_map(|e| {
            std::iter::once(&e.chosen_ids)
                .chain(&e.rejected_ids)
                .map(move |r| (e, r))
        })
        .collect();
    let t = seqs
        .iter()
        .map(|(e, r)| e.prompt_ids.len() + r.len())
        .max()
        .unwrap_or(0);
    let s = seqs.len();
    let mut ids = vec![0i64; s * t];
    let mut pos = vec![0i64; s * t];
    let (mut gather, mut labels, mut sequence) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = 0;
    for (k, (e, resp)) in seqs.iter().enumerate() {
        let p = e.prompt_ids.len();
        let row = &mut ids[k * t..(k + 1) * t];
        row[..p].copy_from_slice(&e.prompt_ids);
        row[p..p + resp.len()].copy_from_slice(resp);
        let prow = &mut pos[k * t..(k + 1) * t];
        prow[..p].copy_from_slice(&e.prompt_positions);
        let last = *e.prompt_positions.last().expect("non-empty prompt");
        for (i, slot) in prow[p..].iter_mut().enumerate() {
            *slot = last + 1 + i as i64;
        }
        for (i, &tok) in resp.iter().enumerate() {
            gather.push((k * t + p - 1 + i) as i64);
            labels.push(tok);
            sequence.push(k as i64);
        }
        tokens += p + resp.len();
    }
    let tensor = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    Ok(Batch {
        input_ids: tensor(&ids).reshape([s as i64, t as i64]),
        position_ids: tensor(&pos).reshape([s as i64, t as i64]),
        gather_index: tensor(&gather),
        labels: tensor(&labels),
        sequence: tensor(&sequence),
        num_samples: examples.len(),
        num_negatives: m,
        tokens,
    })
}

/// One sample laid out for the shared-prompt gradient ([`crate::shared_prompt`]): the prompt
/// once, and the M + 1 responses packed into one continuation that attends to it
/// ([`crate::model::PrefixInput`]).
#[derive(Debug)]
pub struct SharedPromptBatch {
    /// `[1,P]` i64 prompt ids.
    pub prompt_ids: Tensor,
    /// `[1,P]` i64 prompt position ids (synthetic).
    pub prompt_position_ids: Tensor,
    /// `[1,N]` i64: chosen, then rejected 0..M, back to back (N = Σ|y|).
    pub input_ids: Tensor,
    /// `[1,N]` i64: each response continues the prompt (last prompt id + 1, + 2, …).
    pub position_ids: Tensor,
    /// `[N,P+N]` bool: response token i sees every prompt token and the earlier tokens of its
    /// own response (and itself), nothing of the other responses.
    pub attention_mask: Tensor,
    /// `[R]` i64, R = N: rows of `cat(prompt_hidden[P-1], continuation_hidden)` `[1+N,H]` whose
    /// logits predict a response token: the prompt's last row (0) predicts every response's
    /// first token; row 1 + o_s + t − 1 predicts token t > 0 of response s (offset o_s).
    pub gather_index: Tensor,
    /// `[R]` i64 the token each gathered row predicts.
    pub labels: Tensor,
    /// `[R]` i64 the response (0 = chosen, 1 + j = rejected j) of each gathered row.
    pub sequence: Tensor,
    /// M.
    pub num_negatives: usize,
}

/// Lays out `example` (M ≥ 1) for the shared-prompt gradient on `device`.
pub fn collate_shared_prompt(example: &Example, device: Device) -> Result<SharedPromptBatch> {
    let m = example.rejected_ids.len();
    let p = example.prompt_ids.len();
    if p == 0 {
        return Err(TrainerError::Internal("collate: empty prompt".into()));
    }
    let responses: Vec<&Vec<i64>> = std::iter::once(&example.chosen_ids)
        .chain(&example.rejected_ids)
        .collect();
    let n: usize = responses.iter().map(|r| r.len()).sum();
    let last = *example.prompt_positions.last().expect("non-empty prompt");
    let (mut ids, mut pos) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut mask = vec![false; n * (p + n)];
    let (mut gather, mut labels, mut sequence) = (Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0;
    for (s, resp) in responses.iter().enumerate() {
        for (t, &tok) in resp.iter().enumerate() {
            let i = offset + t;
            ids.push(tok);
            pos.push(last + 1 + t as i64);
            let row = &mut mask[i * (p + n)..(i + 1) * (p + n)];
            row[..p].fill(true);
            row[p + offset..=p + i].fill(true);
            gather.push(if t == 0 { 0 } else { i as i64 }); // row 1 + (i − 1)
            labels.push(tok);
            sequence.push(s as i64);
        }
        offset += resp.len();
    }
    let tensor = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    let row = |v: &[i64]| tensor(v).reshape([1, v.len() as i64]);
    Ok(SharedPromptBatch {
        prompt_ids: row(&example.prompt_ids),
        prompt_position_ids: row(&example.prompt_positions),
        input_ids: row(&ids),
        position_ids: row(&pos),
        attention_mask: Tensor::from_slice(&mask)
            .reshape([n as i64, (p + n) as i64])
            .to_device(device),
        gather_index: tensor(&gather),
        labels: tensor(&labels),
        sequence: tensor(&sequence),
        num_negatives: m,
    })
}

impl Batch {
    /// Splits per-sequence values [S] into chosen [B] and rejected [B, M].
    pub fn split_chosen_rejected(&self, per_sequence: &Tensor) -> (Tensor, Tensor) {
        let grid = per_sequence.reshape([self.num_samples as i64, self.num_negatives as i64 + 1]);
        (
            grid.select(1, 0),
            grid.narrow(1, 1, self.num_negatives as i64)
                .to_kind(Kind::Float),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `parquet_source` fuzz crash (a column chunk at a negative offset, on which the parquet
    /// crate asserts) as a data folder: an input error naming the file, the column and the offset,
    /// before any page is decoded.
    #[test]
    fn a_parquet_file_the_reader_panics_on_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.parquet"),
            include_bytes!(
                "../../tests/fuzz/parquet_source/crash-45f57ec5dcdb2a5992227f84dd158a0a8cd64fbf"
            ),
        )
        .unwrap();
        let e = TrainingData::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("a.parquet")
                && e.contains(
                    "declares sizes it cannot hold: row group 0, column \"sample_id\": negative \
                     offset -31 or size 116"
                ),
            "{e}"
        );
    }

    fn ex(id: &str, p: &[i64], pos: &[i64], c: &[i64], r: &[&[i64]]) -> Example {
        Example {
            sample_id: id.into(),
            prompt_ids: p.to_vec(),
            prompt_positions: pos.to_vec(),
            chosen_ids: c.to_vec(),
            rejected_ids: r.iter().map(|x| x.to_vec()).collect(),
        }
    }

    #[test]
    fn shared_prompt_layout_by_hand() {
        let e = ex("a", &[5, 6, 7], &[0, 10, 11], &[8, 2], &[&[9, 9, 2], &[2]]);
        let b = collate_shared_prompt(&e, Device::Cpu).unwrap();
        let v = |t: &Tensor| Vec::<i64>::try_from(t.flatten(0, -1)).unwrap();
        assert_eq!(v(&b.prompt_ids), vec![5, 6, 7]);
        assert_eq!(v(&b.input_ids), vec![8, 2, 9, 9, 2, 2]);
        assert_eq!(v(&b.position_ids), vec![12, 13, 12, 13, 14, 12]);
        // Rows: 0 = last prompt token, 1 + i = response token i. Every response's first token
        // is predicted by row 0; token t > 0 by the row of token t − 1.
        assert_eq!(v(&b.gather_index), vec![0, 1, 0, 3, 4, 0]);
        assert_eq!(v(&b.labels), vec![8, 2, 9, 9, 2, 2]);
        assert_eq!(v(&b.sequence), vec![0, 0, 1, 1, 1, 2]);
        let mask: Vec<bool> = Vec::try_from(b.attention_mask.flatten(0, -1)).unwrap();
        let rows: Vec<String> = mask
            .chunks(9)
            .map(|r| r.iter().map(|&x| if x { '1' } else { '.' }).collect())
            .collect();
        // prompt | chosen | rejected 0 | rejected 1
        assert_eq!(
            rows,
            vec![
                "1111.....",
                "11111....",
                "111..1...",
                "111..11..",
                "111..111.",
                "111.....1"
            ]
        );
    }

    #[test]
    fn collate_lays_out_sequences_by_hand() {
        let e = ex("a", &[5, 6, 7], &[0, 10, 11], &[8, 2], &[&[9, 9, 2], &[2]]);
        let b = collate(&[e], Device::Cpu).unwrap();
        assert_eq!(b.input_ids.size(), vec![3, 6]);
        let ids: Vec<i64> = Vec::try_from(b.input_ids.flatten(0, -1)).unwrap();
        assert_eq!(
            ids,
            vec![5, 6, 7, 8, 2, 0, 5, 6, 7, 9, 9, 2, 5, 6, 7, 2, 0, 0]
        );
        let pos: Vec<i64> = Vec::try_from(b.position_ids.flatten(0, -1)).unwrap();
        assert_eq!(
            pos,
            vec![0, 10, 11, 12, 13, 14, 0, 10, 11, 12, 13, 14, 0, 10, 11, 12, 13, 14]
        );
        // Row t predicts token t+1: the last prompt row (2) predicts the first response token.
        let g: Vec<i64> = Vec::try_from(&b.gather_index).unwrap();
        assert_eq!(g, vec![2, 3, 8, 9, 10, 14]);
        let l: Vec<i64> = Vec::try_from(&b.labels).unwrap();
        assert_eq!(l, vec![8, 2, 9, 9, 2, 2]);
        let s: Vec<i64> = Vec::try_from(&b.sequence).unwrap();
        assert_eq!(s, vec![0, 0, 1, 1, 1, 2]);
        assert_eq!(b.tokens, 5 + 6 + 4);
        let (c, r) = b.split_chosen_rejected(&Tensor::from_slice(&[1.0f32, 2.0, 3.0]));
        assert_eq!(Vec::<f32>::try_from(c).unwrap(), vec![1.0]);
        assert_eq!(r.size(), vec![1, 2]);
    }
}
