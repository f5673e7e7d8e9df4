//! What `logo-engine` prints about a run: the end-of-run summary ([`format_summary`]) and
//! `logo-engine status OUT` ([`format_status`]), both read from what the run wrote.

use std::fmt::Write as _;
use std::path::Path;

use super::{RunSummary, Shard};
use crate::error::{EngineError, Result};

/// `logo-engine status OUT`: units done / pending / failed per shard, from the unit records.
/// `shards`: the shard count to group by; default the one of the latest run in `runs.jsonl`
/// (1 when none). Errors: [`EngineError::Input`] when `dir` holds no run (no
/// `fingerprint.json`) or a record does not parse.
pub fn format_status(dir: &Path, shards: Option<u64>) -> Result<String> {
    let fp = crate::sink::read_fingerprint(dir)?.ok_or_else(|| EngineError::Input {
        path: dir.to_path_buf(),
        message: "no fingerprint.json: not the output of a run".into(),
    })?;
    let done = crate::sink::read_units(dir, fp.short())?;
    let failed = crate::sink::read_failed(dir, fp.short());
    let count = shards
        .or_else(|| latest_shard_count(dir))
        .unwrap_or(1)
        .max(1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: run {} ({} units of {} records)",
        dir.display(),
        fp.short(),
        fp.plan.units.len(),
        fp.plan.unit_rows
    );
    let _ = writeln!(out, "  shard      done  pending   failed   samples");
    let mut totals = [0u64; 4];
    for s in 0..count {
        let mut row = [0u64; 4];
        for u in fp.plan.units.iter().filter(|u| u.index % count == s) {
            if let Some(r) = done.get(&u.index) {
                row[0] += 1;
                row[3] += r.part.as_ref().map_or(0, |p| p.rows);
            } else if failed.contains_key(&u.index) {
                row[2] += 1;
            } else {
                row[1] += 1;
            }
        }
        for (t, r) in totals.iter_mut().zip(row) {
            *t += r;
        }
        let _ = writeln!(
            out,
            "  {:<8} {:>6} {:>8} {:>8} {:>9}",
            format!("{s}/{count}"),
            row[0],
            row[1],
            row[2],
            row[3]
        );
    }
    let _ = writeln!(
        out,
        "  {:<8} {:>6} {:>8} {:>8} {:>9}",
        "all", totals[0], totals[1], totals[2], totals[3]
    );
    for (u, why) in &failed {
        if !done.contains_key(u) {
            let _ = writeln!(out, "  unit {u} failed: {}", why.trim());
        }
    }
    Ok(out)
}

fn latest_shard_count(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(crate::sink::RUN_LOG)).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let shard: Shard = v.get("shard")?.as_str()?.parse().ok()?;
        Some(shard.count)
    })
}

/// Formats the end-of-run summary: units, documents in, samples out, skipped by reason,
/// rejects, generations replayed and computed, seconds (this process) and rows per stage.
pub fn format_summary(s: &RunSummary) -> String {
    let m = &s.manifest;
    let samples: u64 = m.files.iter().map(|f| f.rows).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "logo-engine summary ({:.1} s)",
        s.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  units            {} of {} done (shard {}: {} now, {} found done)",
        m.units_done, m.units_total, s.shard, s.units_committed, s.units_skipped
    );
    let _ = writeln!(
        out,
        "  generations      {} generated, {} replayed from the cache",
        s.generated, s.replayed
    );
    let _ = writeln!(out, "  documents in     {}", m.documents);
    let _ = writeln!(
        out,
        "  questions        {}",
        m.stats.rows_out.get("source").copied().unwrap_or(0)
    );
    let _ = writeln!(out, "  samples out      {samples}");
    let rejected: u64 = m.rejects.values().sum();
    let _ = writeln!(out, "  rejects          {rejected}");
    for (stage, n) in &m.rejects {
        let _ = writeln!(out, "    {stage:<14} {n}");
    }
    let skipped: u64 = m.stats.skipped.values().sum();
    let _ = writeln!(out, "  skipped          {skipped}");
    for (reason, n) in &m.stats.skipped {
        let _ = writeln!(out, "    {reason}: {n}");
    }
    if !m.stats.events.is_empty() {
        let _ = writeln!(out, "  events");
        for (event, n) in &m.stats.events {
            let _ = writeln!(out, "    {event}: {n}");
        }
    }
    let _ = writeln!(
        out,
        "  stage            rows in  rows out   seconds    tokens"
    );
    for (stage, secs) in &s.seconds {
        let _ = writeln!(
            out,
            "    {stage:<12} {:>9} {:>9} {:>9.2} {:>9}",
            m.stats.rows_in.get(stage).copied().unwrap_or(0),
            m.stats.rows_out.get(stage).copied().unwrap_or(0),
            secs,
            m.stats.tokens.get(stage).copied().unwrap_or(0)
        );
    }
    for f in &m.files {
        let _ = writeln!(
            out,
            "  wrote {} ({} rows, {} bytes)",
            s.output.join(&f.path).display(),
            f.rows,
            f.bytes
        );
    }
    out
}
