//! Tests of [`super`] (`data.rs`).

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
            "../../../tests/fuzz/parquet_source/crash-45f57ec5dcdb2a5992227f84dd158a0a8cd64fbf"
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
