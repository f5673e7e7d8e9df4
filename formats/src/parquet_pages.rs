//! Parquet page headers, read before the `parquet` crate decodes a file, so that the sizes a
//! corrupt file declares never become allocations.
//!
//! The `parquet` crate trusts two header fields: a compressed page's `uncompressed_page_size`
//! (it reserves that many bytes before decompressing) and a dictionary page's `num_values` (it
//! resizes the dictionary to that many values before decoding one). A 22 KB file found by the
//! `parquet_source` fuzz target (`tests/fuzz/parquet_source/oom-9b55…`) declares a dictionary of
//! 1.4 billion INT32 values in a page of a few bytes: 5.7 GB asked for, the process aborts.
//! [`check_declared_sizes`] walks every page header of every column chunk (seeking past the
//! page bodies, so it reads only headers) and refuses a file whose declarations cannot be
//! true: a page that runs past its column chunk or the file, an uncompressed size above
//! [`MAX_EXPANSION`]× its compressed size (and above [`SMALL_PAGE`]), a dictionary with more
//! values than its uncompressed bytes can hold.
//!
//! Source: the Parquet format's `parquet.thrift` (`PageHeader`, `DictionaryPageHeader`,
//! fields 1–8) in the Thrift compact protocol (`thrift/doc/specs/thrift-compact-protocol.md`).
//! Only the fields checked here are decoded; every other field is skipped by its type.
//!
//! [`key_value_metadata`] reads the footer's `FileMetaData.key_value_metadata` as a map (where
//! logo's writers record the schema version, checked by `logo_schemas::check_schema_version`).

use std::collections::HashMap;
use std::io::{BufReader, Read, Seek, SeekFrom};

use parquet::basic::Type as PhysicalType;
use parquet::file::metadata::ParquetMetaData;

/// The footer's key-value metadata (`FileMetaData.key_value_metadata`) as key → value; keys
/// without a value are left out, and a file without any gives an empty map.
pub fn key_value_metadata(meta: &ParquetMetaData) -> HashMap<String, String> {
    meta.file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|e| e.value.clone().map(|v| (e.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default()
}

/// Largest accepted ratio of a page's uncompressed to compressed size (zstd and snappy on
/// real text stay far below it); pages up to [`SMALL_PAGE`] bytes are accepted whatever it.
pub const MAX_EXPANSION: u64 = 1024;

/// Uncompressed page size accepted whatever the ratio, bytes (parquet-rs and Spark write
/// pages of 1 MiB by default).
pub const SMALL_PAGE: u64 = 1 << 20;

/// Deepest struct nesting skipped inside a header (statistics hold no deeper).
const MAX_DEPTH: u32 = 16;

/// What a page header declares, as far as [`check_declared_sizes`] needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageSizes {
    /// `PageHeader.uncompressed_page_size`, bytes.
    pub uncompressed: i64,
    /// `PageHeader.compressed_page_size`, bytes (the page body that follows the header).
    pub compressed: i64,
    /// `DictionaryPageHeader.num_values`, for a dictionary page.
    pub dictionary_values: Option<i64>,
}

/// Checks the page headers of every column chunk of the file `r` (of `file_len` bytes)
/// against its footer `metadata`. Errors: a message naming the row group, the column and
/// what is impossible (the caller adds the file name).
pub fn check_declared_sizes<R: Read + Seek>(
    r: R,
    file_len: u64,
    metadata: &ParquetMetaData,
) -> Result<(), String> {
    let mut r = BufReader::new(r);
    for (g, rg) in metadata.row_groups().iter().enumerate() {
        for col in rg.columns() {
            let at = |m: String| format!("row group {g}, column {}: {m}", col.column_path());
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let len = col.compressed_size();
            let (Ok(start), Ok(len)) = (u64::try_from(start), u64::try_from(len)) else {
                return Err(at(format!("negative offset {start} or size {len}")));
            };
            if start.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(at(format!(
                    "chunk of {len} bytes at {start} runs past the file ({file_len} bytes)"
                )));
            }
            let bits = min_value_bits(col.column_type(), col.column_descr().type_length());
            r.seek(SeekFrom::Start(start))
                .map_err(|e| at(e.to_string()))?;
            check_chunk(&mut r, len, bits).map_err(at)?;
        }
    }
    Ok(())
}

/// The fewest bits one plain-encoded value of a physical type takes (a BYTE_ARRAY: its 4-byte
/// length).
fn min_value_bits(t: PhysicalType, type_length: i32) -> u64 {
    match t {
        PhysicalType::BOOLEAN => 1,
        PhysicalType::INT32 | PhysicalType::FLOAT | PhysicalType::BYTE_ARRAY => 32,
        PhysicalType::INT64 | PhysicalType::DOUBLE => 64,
        PhysicalType::INT96 => 96,
        PhysicalType::FIXED_LEN_BYTE_ARRAY => 8 * type_length.max(1) as u64,
    }
}

/// Walks the pages of one column chunk of `len` bytes starting at `r`'s position.
fn check_chunk<R: Read + Seek>(r: &mut R, len: u64, value_bits: u64) -> Result<(), String> {
    let mut left = len;
    let mut page = 0;
    while left > 0 {
        let mut counted = Counted {
            inner: r.by_ref().take(left),
            read: 0,
        };
        let sizes = read_page_header(&mut counted).map_err(|m| format!("page {page}: {m}"))?;
        let header = counted.read;
        let bad = |m: String| Err(format!("page {page}: {m}"));
        let (Ok(compressed), Ok(uncompressed)) = (
            u64::try_from(sizes.compressed),
            u64::try_from(sizes.uncompressed),
        ) else {
            return bad(format!(
                "negative size (compressed {}, uncompressed {})",
                sizes.compressed, sizes.uncompressed
            ));
        };
        if header + compressed > left {
            return bad(format!(
                "{compressed} bytes declared, {} left in the column chunk",
                left - header
            ));
        }
        if uncompressed > SMALL_PAGE && uncompressed > compressed.saturating_mul(MAX_EXPANSION) {
            return bad(format!(
                "{uncompressed} bytes uncompressed declared for {compressed} compressed \
                 (more than {MAX_EXPANSION}x)"
            ));
        }
        if let Some(n) = sizes.dictionary_values {
            if n < 0 || (n as u64).saturating_mul(value_bits) > uncompressed.saturating_mul(8) {
                return bad(format!(
                    "a dictionary of {n} values declared in {uncompressed} bytes"
                ));
            }
        }
        r.seek(SeekFrom::Current(compressed as i64))
            .map_err(|e| format!("page {page}: {e}"))?;
        left -= header + compressed;
        page += 1;
    }
    Ok(())
}

/// A reader that counts the bytes read through it (a header's length).
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Decodes one `PageHeader` (Thrift compact protocol) from `r`: fields 2 and 3 (the sizes)
/// and field 7's field 1 (a dictionary's `num_values`); everything else is skipped.
/// Errors: the end of the input inside the header, a malformed field.
pub fn read_page_header<R: Read>(r: &mut R) -> Result<PageSizes, String> {
    let mut sizes = PageSizes::default();
    let mut fields = FieldReader::default();
    while let Some((id, ty)) = fields.next(r)? {
        match (id, ty) {
            (2, I32) => sizes.uncompressed = read_i32(r)?,
            (3, I32) => sizes.compressed = read_i32(r)?,
            (7, STRUCT) => {
                let mut inner = FieldReader::default();
                while let Some((id, ty)) = inner.next(r)? {
                    match (id, ty) {
                        (1, I32) => sizes.dictionary_values = Some(read_i32(r)?),
                        _ => skip(r, ty, 1)?,
                    }
                }
            }
            _ => skip(r, ty, 0)?,
        }
    }
    Ok(sizes)
}

const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;

/// The field headers of one struct: (field id, type) until STOP.
#[derive(Default)]
struct FieldReader {
    last: i64,
}

impl FieldReader {
    fn next<R: Read>(&mut self, r: &mut R) -> Result<Option<(i64, u8)>, String> {
        let b = read_byte(r)?;
        if b == 0 {
            return Ok(None);
        }
        let (delta, ty) = ((b >> 4) as i64, b & 0x0f);
        self.last = if delta == 0 {
            read_zigzag(r)?
        } else {
            self.last + delta
        };
        Ok(Some((self.last, ty)))
    }
}

/// Skips one value of compact type `ty` (inside a struct: booleans carry no byte).
fn skip<R: Read>(r: &mut R, ty: u8, depth: u32) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("nesting too deep".into());
    }
    match ty {
        BOOL_TRUE | BOOL_FALSE => Ok(()),
        BYTE => read_byte(r).map(drop),
        I16 | I32 | I64 => read_varint(r).map(drop),
        DOUBLE => skip_bytes(r, 8),
        BINARY => {
            let n = read_varint(r)?;
            skip_bytes(r, n)
        }
        LIST | SET => {
            let b = read_byte(r)?;
            let n = match b >> 4 {
                15 => read_varint(r)?,
                n => n as u64,
            };
            skip_elements(r, b & 0x0f, n, depth)
        }
        MAP => {
            let n = read_varint(r)?;
            if n == 0 {
                return Ok(());
            }
            let kv = read_byte(r)?;
            for _ in 0..n {
                skip_element(r, kv >> 4, depth)?;
                skip_element(r, kv & 0x0f, depth)?;
            }
            Ok(())
        }
        STRUCT => {
            let mut fields = FieldReader::default();
            while let Some((_, ty)) = fields.next(r)? {
                skip(r, ty, depth + 1)?;
            }
            Ok(())
        }
        other => Err(format!("unknown field type {other}")),
    }
}

/// Skips `n` list elements; each takes at least one byte, so a huge `n` ends at the input's
/// end, not in a long loop.
fn skip_elements<R: Read>(r: &mut R, ty: u8, n: u64, depth: u32) -> Result<(), String> {
    for _ in 0..n {
        skip_element(r, ty, depth)?;
    }
    Ok(())
}

/// One element of a list, set or map: a boolean is one byte there.
fn skip_element<R: Read>(r: &mut R, ty: u8, depth: u32) -> Result<(), String> {
    match ty {
        BOOL_TRUE | BOOL_FALSE => read_byte(r).map(drop),
        _ => skip(r, ty, depth + 1),
    }
}

fn read_byte<R: Read>(r: &mut R) -> Result<u8, String> {
    let mut b = [0u8];
    r.read_exact(&mut b)
        .map_err(|_| "the column chunk ends inside a page header".to_string())?;
    Ok(b[0])
}

fn skip_bytes<R: Read>(r: &mut R, n: u64) -> Result<(), String> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).map_err(|e| e.to_string())?;
    if copied < n {
        return Err("the column chunk ends inside a page header".into());
    }
    Ok(())
}

/// An unsigned LEB128 varint of at most 10 bytes.
fn read_varint<R: Read>(r: &mut R) -> Result<u64, String> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = read_byte(r)?;
        v |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a varint longer than 10 bytes".into())
}

/// An i32 field as the `parquet` crate reads it: a zigzag varint truncated to 32 bits.
fn read_i32<R: Read>(r: &mut R) -> Result<i64, String> {
    Ok(read_zigzag(r)? as i32 as i64)
}

/// A zigzag-encoded signed varint (i16, i32, i64 in the compact protocol).
fn read_zigzag<R: Read>(r: &mut R) -> Result<i64, String> {
    let v = read_varint(r)?;
    Ok((v >> 1) as i64 ^ -((v & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::column::page::Page;
    use parquet::file::properties::WriterProperties;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// A real file: zstd, dictionary-encoded strings and ints, 3 row groups of 2 pages' worth.
    fn written() -> Vec<u8> {
        let n = 3000;
        let ints: ArrayRef = Arc::new(Int32Array::from_iter_values((0..n).map(|i| i % 7)));
        let text: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("document {} of the corpus", i % 50)),
        ));
        let batch = RecordBatch::try_from_iter([("i", ints), ("s", text)]).unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(1000))
            .set_data_page_row_count_limit(400)
            .set_write_batch_size(100)
            .build();
        let mut out = Vec::new();
        let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        out
    }

    /// The headers read here agree with the `parquet` crate's own page reader, page by page:
    /// as many pages, each dictionary's `num_values`, each page's uncompressed size (the
    /// length of the buffer the crate decompresses into); and the file passes the check.
    #[test]
    fn headers_agree_with_the_parquet_crates_page_reader() {
        let bytes = written();
        let reader = SerializedFileReader::new(as_file(&bytes)).unwrap();
        let meta = reader.metadata();
        check_declared_sizes(std::io::Cursor::new(&bytes), bytes.len() as u64, meta).unwrap();
        let mut pages = 0;
        for g in 0..meta.num_row_groups() {
            let rg = reader.get_row_group(g).unwrap();
            for c in 0..meta.row_group(g).num_columns() {
                let col = meta.row_group(g).column(c);
                let start = col
                    .dictionary_page_offset()
                    .unwrap_or(col.data_page_offset());
                let mut cur = std::io::Cursor::new(&bytes);
                cur.set_position(start as u64);
                let mut theirs = rg.get_column_page_reader(c).unwrap();
                while let Some(page) = theirs.get_next_page().unwrap() {
                    let ours = read_page_header(&mut cur).unwrap();
                    cur.set_position(cur.position() + ours.compressed as u64);
                    assert_eq!(ours.uncompressed as usize, page.buffer().len());
                    match page {
                        Page::DictionaryPage { num_values, .. } => {
                            assert_eq!(ours.dictionary_values, Some(num_values as i64))
                        }
                        _ => assert_eq!(ours.dictionary_values, None),
                    }
                    pages += 1;
                }
                assert_eq!(cur.position(), (start + col.compressed_size()) as u64);
            }
        }
        // 3 row groups × 2 columns, each a dictionary page and at least 2 data pages.
        assert!(pages >= 18, "{pages} pages");
    }

    fn as_file(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A dictionary page header by hand: type 2, sizes, `num_values`, then STOP.
    fn dictionary_header(uncompressed: i64, compressed: i64, num_values: i64) -> Vec<u8> {
        let zz = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
        let mut h = vec![0x15];
        varint(zz(2), &mut h);
        h.push(0x15);
        varint(zz(uncompressed), &mut h);
        h.push(0x15);
        varint(zz(compressed), &mut h);
        h.push(0x4c); // field 7 (delta 4), struct
        h.push(0x15);
        varint(zz(num_values), &mut h);
        h.push(0x15); // encoding PLAIN
        h.push(0);
        h.extend([0, 0]); // STOP of the inner struct, of the header
        h
    }

    #[test]
    fn a_hand_built_header_decodes_and_impossible_sizes_are_named() {
        let h = dictionary_header(40, 40, 10);
        let got = read_page_header(&mut h.as_slice()).unwrap();
        assert_eq!(
            got,
            PageSizes {
                uncompressed: 40,
                compressed: 40,
                dictionary_values: Some(10)
            }
        );
        let chunk = |h: Vec<u8>, body: usize| {
            let mut c = h;
            c.extend(std::iter::repeat_n(0u8, body));
            c
        };
        // Ten INT32s fit in 40 bytes; eleven do not.
        let ok = chunk(dictionary_header(40, 40, 10), 40);
        check_chunk(&mut std::io::Cursor::new(&ok), ok.len() as u64, 32).unwrap();
        let over = chunk(dictionary_header(40, 40, 11), 40);
        let e = check_chunk(&mut std::io::Cursor::new(&over), over.len() as u64, 32).unwrap_err();
        assert_eq!(e, "page 0: a dictionary of 11 values declared in 40 bytes");
        // A body longer than what is left of the chunk.
        let short = chunk(dictionary_header(40, 40, 10), 39);
        let e = check_chunk(&mut std::io::Cursor::new(&short), short.len() as u64, 32).unwrap_err();
        assert!(e.contains("40 bytes declared, 39 left"), "{e}");
        // 2 MiB from 100 bytes is more than 1024x.
        let big = chunk(dictionary_header(2 << 20, 100, 1), 100);
        let e = check_chunk(&mut std::io::Cursor::new(&big), big.len() as u64, 32).unwrap_err();
        assert!(e.contains("more than 1024x"), "{e}");
        // A header cut short.
        let cut = &dictionary_header(40, 40, 10)[..5];
        assert!(read_page_header(&mut &cut[..])
            .unwrap_err()
            .contains("ends inside"));
    }

    /// The fuzz target's out-of-memory input: refused before any decoding, naming the page.
    #[test]
    fn the_out_of_memory_fuzz_input_is_refused() {
        let bytes = include_bytes!(
            "../../tests/fuzz/parquet_source/oom-9b5504e982089f2d3c7dc5dbcac627d00c6aed68"
        );
        let reader = SerializedFileReader::new(as_file(bytes)).unwrap();
        let e = check_declared_sizes(
            std::io::Cursor::new(&bytes[..]),
            bytes.len() as u64,
            reader.metadata(),
        )
        .unwrap_err();
        assert!(e.contains("a dictionary of 1420382885 values"), "{e}");
    }
}
