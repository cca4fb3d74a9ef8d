//! Checking an export without the database (`onepd verify --export FILE`).
//!
//! What holds when the check passes:
//! * every line is as onepd writes it and its `check` follows from the lines
//!   before: no line was changed, removed, added or moved (a change is named
//!   at its line);
//! * every event's hash recomputes from its envelope and stored bytes and
//!   the hash before it, and each event links to the one before it: the
//!   events are an unmodified segment of a hash chain, gap-free when the
//!   export has no filter;
//! * the end line's count, range and hashes match the lines.
//!
//! Anyone can write a file that passes those checks. What ties it to one
//! log: with the master key, the end line's signature and its signed head;
//! without it, a head the operator saved and kept elsewhere
//! (`--expect-head`, which checks its signature with the master key too), or
//! a chain hash compared by other means.

use std::collections::HashMap;
use std::io::BufRead;

use serde::de::DeserializeOwned;

use super::{Checker, EXPORT_FORMAT, ExportEnd, ExportHeader, ExportRow, SIGNATURE_PURPOSE, body};
use crate::MasterKey;
use crate::store::{SignedHead, same_mac};

/// What a check of an export found, when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The range covered.
    pub from_position: u64,
    /// Its last position.
    pub to_position: u64,
    /// Event lines.
    pub events: u64,
    /// Whether every event of the range is in the file (no filter).
    pub gap_free: bool,
    /// The chain hash at the range's end (hex).
    pub last_hash: String,
    /// The signature: checked, absent, or not checkable without a key.
    pub signature: Signature,
    /// Chain hashes by position, of the positions `--expect-head` asked for.
    pub hashes: HashMap<u64, String>,
}

/// How an export's signature stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// It was signed, and the signature and signed head hold under the
    /// master key given.
    Holds,
    /// It was signed; no master key was given to check it.
    NotChecked,
    /// It was made without a master key.
    Unsigned,
}

/// How strict a check is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Accept an unsigned export though a master key is given (a log that
    /// has no master key signs nothing).
    pub allow_unsigned: bool,
}

/// Where and why the check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ExportProblem {
    /// The line (from 1) where it failed.
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// Walks an export's lines in order.
struct Walk<'a> {
    master: Option<&'a MasterKey>,
    allow_unsigned: bool,
    wanted: Vec<u64>,
    checker: Checker,
    line: u64,
    header: Option<ExportHeader>,
    end: Option<ExportEnd>,
    /// Position and hash of the last event line.
    last: Option<(u64, String)>,
    events: u64,
    hashes: HashMap<u64, String>,
}

fn parse<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|err| format!("not {what} as onepd writes it ({err})"))
}

impl<'a> Walk<'a> {
    fn problem(&self, reason: impl Into<String>) -> ExportProblem {
        ExportProblem { line: self.line, reason: reason.into() }
    }

    /// Checks the line's bytes against what onepd writes for its fields,
    /// and its check against the lines before.
    fn check_line(&mut self, text: &str, body_text: &str, check: &str) -> Result<(), String> {
        let open = body_text.strip_suffix('}').unwrap_or(body_text);
        if text != format!("{open},\"check\":\"{check}\"}}") {
            return Err("its bytes are not as onepd writes its fields: the line was edited".into());
        }
        let mut probe = self.checker.clone();
        if probe.next(body_text) != check {
            return Err("its check does not follow from its bytes and the lines before it: this line was changed, \
                        or lines before it were removed, added or moved"
                .into());
        }
        self.checker = probe;
        Ok(())
    }

    fn feed(&mut self, text: &str) -> Result<(), ExportProblem> {
        self.line += 1;
        if self.end.is_some() {
            return Err(self.problem("a line after the end line: lines were added"));
        }
        if self.header.is_none() {
            let mut header: ExportHeader = parse(text, "an export's header line").map_err(|err| self.problem(err))?;
            if header.export != EXPORT_FORMAT {
                return Err(self.problem(format!("format {:?}; this onepd reads {EXPORT_FORMAT}", header.export)));
            }
            let check = std::mem::take(&mut header.check);
            self.check_line(text, &body(&header), &check).map_err(|err| self.problem(err))?;
            self.header = Some(header);
            return Ok(());
        }
        if text.starts_with("{\"export_end\"") {
            let mut end: ExportEnd = parse(text, "an export's end line").map_err(|err| self.problem(err))?;
            let check = std::mem::take(&mut end.check);
            let lines_before = self.checker.last();
            self.check_line(text, &body(&end), &check).map_err(|err| self.problem(err))?;
            if end.lines != lines_before {
                return Err(self.problem("the check it names is not the last line's: lines were changed before it"));
            }
            self.check_end(&end)?;
            self.end = Some(end);
            return Ok(());
        }
        let mut row: ExportRow = parse(text, "an event line").map_err(|err| self.problem(err))?;
        let check = std::mem::take(&mut row.check);
        self.check_event(&row)?;
        self.check_line(text, &body(&row), &check).map_err(|err| self.problem(err))
    }

    fn check_event(&mut self, row: &ExportRow) -> Result<(), ExportProblem> {
        let header = self.header.as_ref().expect("the header is read first");
        let gap_free = header.filter.is_everything();
        let expected = self.last.as_ref().map_or(header.from_position, |(position, _)| position + 1);
        if row.position < expected || (gap_free && row.position != expected) {
            return Err(self.problem(format!(
                "position {} where {expected} comes next: lines were removed or moved",
                row.position
            )));
        }
        if let Some(to) = header.to_position
            && row.position > to
        {
            return Err(self.problem(format!("position {} is past the export's end, {to}", row.position)));
        }
        match &self.last {
            Some((position, hash)) if row.position == position + 1 && &row.previous_hash != hash => {
                return Err(self.problem(format!(
                    "its previous hash is not the hash of position {position} on the line before: the chain does \
                     not link"
                )));
            }
            _ => {}
        }
        if let Some(problem) = inconsistency(row) {
            return Err(self.problem(problem));
        }
        let previous: [u8; 32] = hex::decode(&row.previous_hash)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| self.problem("previous_hash is not 32 bytes of hex"))?;
        let recomputed = row.chain_hash(&previous).map_err(|err| self.problem(err))?;
        if hex::encode(recomputed) != row.hash {
            return Err(self.problem(format!(
                "the hash of position {} does not hold (stored {}, recomputed {}): its envelope or stored bytes \
                 were changed",
                row.position,
                row.hash,
                hex::encode(recomputed)
            )));
        }
        if self.wanted.contains(&row.position) {
            self.hashes.insert(row.position, row.hash.clone());
        }
        self.last = Some((row.position, row.hash.clone()));
        self.events += 1;
        Ok(())
    }

    fn check_end(&mut self, end: &ExportEnd) -> Result<(), ExportProblem> {
        let header = self.header.as_ref().expect("the header is read first");
        if end.from_position != header.from_position || Some(end.to_position) != header.to_position {
            return Err(self.problem("its range is not the header's"));
        }
        if end.events != self.events {
            return Err(self.problem(format!(
                "it counts {} events; the file holds {}: event lines were removed or added",
                end.events, self.events
            )));
        }
        match &self.last {
            Some((position, hash)) if *position == end.to_position && hash != &end.last_hash => {
                return Err(self.problem("its last hash is not the last event's"));
            }
            Some((position, _)) if header.filter.is_everything() && *position != end.to_position => {
                return Err(self.problem(format!(
                    "the events end at position {position}, before the export's end, {}: the file was cut short",
                    end.to_position
                )));
            }
            None if header.filter.is_everything() && end.to_position >= end.from_position => {
                return Err(self.problem("the export's range is not empty, and the file holds no event"));
            }
            None if end.to_position < end.from_position && end.previous_hash != end.last_hash => {
                return Err(self.problem("an empty export whose hashes differ"));
            }
            _ => {}
        }
        if self.master.is_some() && end.signature.is_none() && !self.allow_unsigned {
            return Err(self.problem(
                "the export is not signed, and a master key is here to check a signature: onepd signs every export \
                 made with a master key, so the signature was removed (if this log has no master key, pass \
                 --allow-unsigned)",
            ));
        }
        if let Some(master) = self.master
            && end.signature.is_some()
        {
            let mut unsigned = end.clone();
            unsigned.signature = None;
            unsigned.check = String::new();
            let expected = master.mac(SIGNATURE_PURPOSE, body(&unsigned).as_bytes());
            if !same_mac(end.signature.as_deref().unwrap_or_default(), &expected) {
                return Err(self.problem(
                    "the signature does not hold under this master key: the file was altered after export, or made \
                     with another key",
                ));
            }
            if let Some(head) = &end.head
                && (!head.signed_by(master) || head.position != end.to_position || head.hash != end.last_hash)
            {
                return Err(self.problem("the signed head does not hold, or is not of the export's end"));
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<ExportReport, ExportProblem> {
        let Some(end) = self.end else {
            return Err(ExportProblem {
                line: self.line,
                reason: "the file ends without its end line: it was cut short".into(),
            });
        };
        let header = self.header.expect("an end line follows a header");
        let signature = match (&end.signature, self.master) {
            (None, _) => Signature::Unsigned,
            (Some(_), Some(_)) => Signature::Holds,
            (Some(_), None) => Signature::NotChecked,
        };
        Ok(ExportReport {
            from_position: end.from_position,
            to_position: end.to_position,
            events: end.events,
            gap_free: header.filter.is_everything(),
            last_hash: end.last_hash,
            signature,
            hashes: self.hashes,
        })
    }
}

/// What in `row` contradicts itself: fields onepd derives from others.
fn inconsistency(row: &ExportRow) -> Option<String> {
    if row.time != onepd_domain::Timestamp(row.recorded_at).to_rfc3339() {
        return Some("its time is not its recorded_at".into());
    }
    if row.rejected != (row.event_type == onepd_domain::events::message::MessageRejected::TYPE) {
        return Some("rejected does not match its event type".into());
    }
    if row.erased.is_some() && (row.data.is_some() || row.key_id.is_none() || row.stored_data.is_none()) {
        return Some("an erased event with a payload, or without its sealed bytes".into());
    }
    if row.key_id.is_some() && row.stored_data.is_none() {
        return Some("a sealed event without its sealed bytes".into());
    }
    if row.stored_data.is_none() && row.data.is_none() {
        return Some("neither data nor stored_data holds the stored payload".into());
    }
    None
}

/// Checks the lines of an export, in order. `heads` are positions whose
/// hashes the report should carry (for saved heads). Fails at the first
/// line that does not hold.
pub fn check_lines(
    lines: impl Iterator<Item = Result<String, String>>,
    master: Option<&MasterKey>,
    heads: &[u64],
    options: CheckOptions,
) -> Result<ExportReport, ExportProblem> {
    let mut walk = Walk {
        master,
        allow_unsigned: options.allow_unsigned,
        wanted: heads.to_vec(),
        checker: Checker::default(),
        line: 0,
        header: None,
        end: None,
        last: None,
        events: 0,
        hashes: HashMap::new(),
    };
    for line in lines {
        let text = line.map_err(|reason| ExportProblem { line: walk.line + 1, reason })?;
        walk.feed(&text)?;
    }
    if walk.header.is_none() {
        return Err(ExportProblem { line: 1, reason: "the file is empty".into() });
    }
    walk.finish()
}

/// Checks an NDJSON export.
pub fn check_ndjson(
    reader: impl BufRead,
    master: Option<&MasterKey>,
    heads: &[u64],
    options: CheckOptions,
) -> Result<ExportReport, ExportProblem> {
    // Lines end at `\n` only: a `\r` stays in the line, which then is not
    // as onepd writes it.
    let lines = reader.split(b'\n').map(|line| {
        let line = line.map_err(|err| format!("cannot be read ({err})"))?;
        String::from_utf8(line).map_err(|_| "not UTF-8".to_owned())
    });
    check_lines(lines, master, heads, options)
}

/// How a head saved with `onepd verify --save-head` stands against an
/// export's report: `None` when it holds.
pub fn check_saved_head(report: &ExportReport, saved: &SignedHead, master: &MasterKey) -> Option<String> {
    if !saved.signed_by(master) {
        return Some("the saved head's signature does not match this master key".into());
    }
    match report.hashes.get(&saved.position) {
        None => Some(format!(
            "the saved head is at position {}, which the export does not hold (it covers {} to {})",
            saved.position, report.from_position, report.to_position
        )),
        Some(hash) if hash != &saved.hash => Some(format!(
            "the export's event at position {} is not the one the saved head names (saved {}, found {hash})",
            saved.position, saved.hash
        )),
        Some(_) => None,
    }
}

/// Checks a Parquet export: its rows as the lines the NDJSON export holds.
pub fn check_parquet(
    file: std::fs::File,
    master: Option<&MasterKey>,
    heads: &[u64],
    options: CheckOptions,
) -> Result<ExportReport, ExportProblem> {
    let lines = super::parquet::lines(file).map_err(|err| ExportProblem { line: 0, reason: err.to_string() })?;
    check_lines(lines, master, heads, options)
}
