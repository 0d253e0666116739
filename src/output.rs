//! The per-node output files: `<role>-<ip>-<port>.txt` for people (also echoed to the screen)
//! and `<role>-<ip>-<port>.jsonl` for tools. Every record is written through at once (records
//! of events handled together share one `write` call per file), so a killed process loses
//! nothing it had logged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::node::Record;

pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
use crate::wire::Role;

/// The stamp that starts every line for people, in the `.txt` files and on the screen (log
/// lines too): local time to the millisecond, `2026-12-01 20:39:16.617`.
///
/// The date and time of the second are formatted once per second and thread (a local offset
/// changes only on a second's boundary): a busy peer stamps a line batch per dispatch, and
/// chrono's formatting, which parses the format string each time, was a few percent of a
/// lightly loaded peer's CPU.
pub fn local_stamp(ts_us: u64) -> String {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let Some(at) = chrono::DateTime::from_timestamp_micros(ts_us as i64) else {
        return chrono::Local::now()
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string();
    };
    let second = at.timestamp();
    let millis = at.timestamp_subsec_millis();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let local = at.with_timezone(&chrono::Local);
            *cached = (second, local.format("%Y-%m-%d %H:%M:%S").to_string());
        }
        format!("{}.{millis:03}", cached.1)
    })
}

/// Keys every record has; a field of the same name is not written twice.
const RESERVED: [&str; 4] = ["ts_ms", "node", "event", "ts_us"];

pub struct Output {
    /// The node's address as a JSON string, quoted and escaped once.
    node_json: String,
    files: Mutex<Files>,
    /// Records decided but not yet written, in the order they were decided (see `enqueue`).
    pending: Mutex<std::collections::VecDeque<(Vec<Record>, u64)>>,
    echo: bool,
    txt_path: PathBuf,
    jsonl_path: PathBuf,
}

/// The two files, and the buffers their lines are made in (kept from one write to the next:
/// a busy peer writes a batch per dispatch, and growing new buffers each time was a
/// reallocation or two per batch).
struct Files {
    txt: File,
    jsonl: File,
    json: Vec<u8>,
    lines: String,
    words: String,
    /// The text of the address the last receipt came from: the receipts of a burst came on
    /// one link.
    from: Option<(SocketAddr, String)>,
}

/// Buffers grown past this by a large burst are let go after it.
const KEPT_BUFFER: usize = 1 << 20;

/// `peer-127.0.0.1-9101`, `seed-::1-9001`.
pub fn file_stem(role: Role, addr: &SocketAddr) -> String {
    let role = match role {
        Role::Peer => "peer",
        Role::Seed => "seed",
    };
    format!("{role}-{}-{}", addr.ip(), addr.port())
}

impl Output {
    /// Opens both files in `dir` for appending, creating `dir` and the files if needed. A
    /// re-run of a node with the same address never destroys an earlier run's lines: they stay
    /// above, the `.jsonl` run starts at its `started` record (what `report` splits runs at),
    /// and the `.txt` gets a separator line.
    pub fn create(dir: &Path, role: Role, addr: &SocketAddr, echo: bool) -> io::Result<Output> {
        std::fs::create_dir_all(dir)?;
        let stem = file_stem(role, addr);
        let txt_path = dir.join(format!("{stem}.txt"));
        let jsonl_path = dir.join(format!("{stem}.jsonl"));
        let (mut txt, txt_earlier) = open_append(&txt_path)?;
        let (jsonl, _) = open_append(&jsonl_path)?;
        if txt_earlier {
            writeln!(
                txt,
                "{}  ---- new run of {stem}: the lines above are from earlier runs ----",
                local_stamp(unix_us())
            )?;
        }
        Ok(Output {
            node_json: serde_json::to_string(&addr.to_string()).unwrap_or_default(),
            files: Mutex::new(Files {
                txt,
                jsonl,
                json: Vec::new(),
                lines: String::new(),
                words: String::new(),
                from: None,
            }),
            pending: Mutex::new(Default::default()),
            echo,
            txt_path,
            jsonl_path,
        })
    }

    pub fn txt_path(&self) -> &Path {
        &self.txt_path
    }

    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl_path
    }

    /// Writes one record stamped now. I/O errors are logged, never fatal: losing a line of
    /// output must not stop a node.
    pub fn record(&self, rec: Record) {
        self.record_at(rec, unix_us());
    }

    /// Writes one record stamped with `ts_us` (Unix microseconds): the moment the event
    /// happened, which can be a little before the record is written.
    pub fn record_at(&self, rec: Record, ts_us: u64) {
        self.record_all(vec![rec], ts_us);
    }

    /// Queues records decided together (under the node's core lock, so queues are in decision
    /// order) for `write_pending`.
    pub fn enqueue(&self, recs: Vec<Record>, ts_us: u64) {
        if !recs.is_empty() {
            self.pending.lock().push_back((recs, ts_us));
        }
    }

    /// Writes every queued batch, oldest first, with one `write` per file for all of them.
    /// The files stay locked while the queue is drained, so no batch queued later is written
    /// before one queued earlier, whichever thread writes it.
    pub fn write_pending(&self) {
        // Nothing queued (most dispatches of a busy link): the files' lock is not taken. A
        // batch queued after this look is written by the thread that queued it.
        if self.pending.lock().is_empty() {
            return;
        }
        let mut files = self.files.lock();
        loop {
            let next = self.pending.lock().pop_front();
            let Some((recs, ts_us)) = next else {
                break;
            };
            self.format(&mut files, recs, ts_us);
        }
        self.write_out(&mut files);
    }

    /// Writes records that share one moment with one `write` per file, so a burst of events
    /// handled together costs two system calls, not two per record.
    pub fn record_all(&self, recs: Vec<Record>, ts_us: u64) {
        // Behind whatever the core decided before, never above it.
        self.enqueue(recs, ts_us);
        self.write_pending();
    }

    /// Appends the lines of `recs` to the buffers in `files`.
    fn format(&self, files: &mut Files, recs: Vec<Record>, ts_us: u64) {
        // Written by hand rather than through a `serde_json::Map` per record: one buffer for
        // the whole burst, no per-key allocations (this runs for every message received).
        let Files {
            json,
            lines,
            words,
            from,
            ..
        } = files;
        json.reserve(200 * recs.len());
        // The same moment as the .jsonl lines, in local time.
        let mut stamp = None;
        for rec in recs {
            let _ = write!(json, "{{\"ts_ms\":{},\"node\":", ts_us / 1000);
            json.extend_from_slice(self.node_json.as_bytes());
            json.extend_from_slice(b",\"event\":");
            let _ = serde_json::to_writer(&mut *json, rec.event);
            match &rec.receipt {
                // Every delivery's record: its words go straight into the buffers.
                Some(r) => {
                    words.clear();
                    if from.as_ref().is_none_or(|(a, _)| *a != r.from) {
                        *from = Some((r.from, crate::texts::addr_text(&r.from)));
                    }
                    let from_text = from.as_ref().map_or("", |(_, t)| t.as_str());
                    if crate::peer::records::write_receipt(r, from_text, json, words) {
                        push_line(lines, &mut stamp, ts_us, words);
                    }
                }
                None => {
                    for (key, value) in &rec.fields {
                        if RESERVED.contains(key) {
                            continue;
                        }
                        json.push(b',');
                        let _ = serde_json::to_writer(&mut *json, key);
                        json.push(b':');
                        let _ = serde_json::to_writer(&mut *json, value);
                    }
                    if let Some(l) = &rec.line {
                        push_line(lines, &mut stamp, ts_us, l);
                    }
                }
            }
            // Microseconds too: one loopback hop takes tens of them, so latency figures need it.
            let _ = writeln!(json, ",\"ts_us\":{ts_us}}}");
        }
    }

    /// Writes what `format` made, and empties the buffers.
    fn write_out(&self, files: &mut Files) {
        if !files.json.is_empty() {
            if let Err(e) = files.jsonl.write_all(&files.json) {
                log::warn!("cannot write {}: {e}", self.jsonl_path.display());
            }
        }
        if !files.lines.is_empty() {
            if let Err(e) = files.txt.write_all(files.lines.as_bytes()) {
                log::warn!("cannot write {}: {e}", self.txt_path.display());
            }
            if self.echo {
                // A closed stdout must not kill the node: ignore errors instead of println!.
                let _ = io::stdout().lock().write_all(files.lines.as_bytes());
            }
        }
        files.json.clear();
        files.lines.clear();
        if files.json.capacity() > KEPT_BUFFER {
            files.json = Vec::new();
        }
        if files.lines.capacity() > KEPT_BUFFER {
            files.lines = String::new();
        }
    }
}

/// Appends one `.txt` line: the local time of `ts_us` (made once per burst, in `stamp`), then
/// `words`.
fn push_line(lines: &mut String, stamp: &mut Option<String>, ts_us: u64, words: &str) {
    lines.push_str(stamp.get_or_insert_with(|| local_stamp(ts_us)));
    lines.push_str("  ");
    lines.push_str(words);
    lines.push('\n');
}

/// Opens `path` for appending; says whether it already held lines. A run killed in the middle
/// of a line left it without its newline: one is added, so the new run's first record starts
/// a line of its own instead of being glued to (and lost with) the cut one.
fn open_append(path: &Path) -> io::Result<(File, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok((f, false));
    }
    let mut last = [0u8; 1];
    f.seek(SeekFrom::End(-1))?;
    f.read_exact(&mut last)?;
    if last[0] != b'\n' {
        // Append mode: the write goes to the end whatever the read position.
        f.write_all(b"\n")?;
    }
    Ok((f, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_stamp_is_the_local_time_to_the_millisecond_whatever_was_stamped_before() {
        let full = |us: u64| {
            chrono::DateTime::from_timestamp_micros(us as i64)
                .unwrap()
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S%.3f")
                .to_string()
        };
        // The same second twice, the next one, an earlier one, a millisecond's edges.
        let base = 1_796_556_079_000_000;
        for us in [
            base,
            base + 999_999,
            base + 1_000_000,
            base + 1_000,
            base - 1,
            0,
        ] {
            assert_eq!(local_stamp(us), full(us), "{us}");
        }
    }

    #[test]
    fn records_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:9101".parse().unwrap();
        let out = Output::create(dir.path(), Role::Peer, &addr, false).unwrap();
        out.record(
            Record::new("started")
                .field("role", "peer")
                .line("listening"),
        );
        out.record(Record::new("stats").field("frames_in", 3));
        let jsonl = std::fs::read_to_string(out.jsonl_path()).unwrap();
        let lines: Vec<Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "started");
        assert_eq!(lines[0]["node"], "127.0.0.1:9101");
        assert_eq!(lines[0]["role"], "peer");
        assert!(lines[0]["ts_ms"].as_u64().unwrap() > 1_600_000_000_000);
        let txt = std::fs::read_to_string(out.txt_path()).unwrap();
        assert_eq!(txt.lines().count(), 1);
        assert!(txt.ends_with("  listening\n"));
        assert!(out.txt_path().ends_with("peer-127.0.0.1-9101.txt"));
    }

    #[test]
    fn fields_keep_their_order_are_escaped_and_cannot_replace_the_fixed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "[::1]:9101".parse().unwrap();
        let out = Output::create(dir.path(), Role::Peer, &addr, false).unwrap();
        out.record_all(
            vec![
                Record::new("gossip_received")
                    .field("text", "a \"quoted\"\nline\u{1}")
                    .field("from", "127.0.0.1:1")
                    .field("text", "replaced")
                    .field("event", "spoofed")
                    .field("n", 3),
                Record::new("stats"),
            ],
            1_795_313_883_123_456,
        );
        let jsonl = std::fs::read_to_string(out.jsonl_path()).unwrap();
        let lines: Vec<&str> = jsonl.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"ts_ms":1795313883123,"node":"[::1]:9101","event":"gossip_received","text":"replaced","from":"127.0.0.1:1","n":3,"ts_us":1795313883123456}"#
        );
        let v: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(v["event"], "stats");
        let r = Record::new("x").field("text", "a \"q\"\n\u{1}");
        let mut one = String::new();
        out.record_all(vec![r], 1);
        one.push_str(
            std::fs::read_to_string(out.jsonl_path())
                .unwrap()
                .lines()
                .last()
                .unwrap(),
        );
        let v: Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["text"], "a \"q\"\n\u{1}");
    }

    #[test]
    fn a_rerun_appends_after_the_earlier_run_and_mends_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:9101".parse().unwrap();
        let out = Output::create(dir.path(), Role::Peer, &addr, false).unwrap();
        out.record(Record::new("started").line("first run"));
        drop(out);
        // A kill in the middle of a record.
        let jsonl = dir.path().join("peer-127.0.0.1-9101.jsonl");
        let mut f = OpenOptions::new().append(true).open(&jsonl).unwrap();
        f.write_all(b"{\"ts_ms\":1,\"ev").unwrap();
        drop(f);
        let out = Output::create(dir.path(), Role::Peer, &addr, false).unwrap();
        out.record(Record::new("started").line("second run"));
        let lines: Vec<String> = std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let v: Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(v["event"], "started");
        let txt = std::fs::read_to_string(out.txt_path()).unwrap();
        let txt: Vec<&str> = txt.lines().collect();
        assert_eq!(txt.len(), 3, "{txt:?}");
        assert!(txt[0].ends_with("  first run"));
        assert!(txt[1].contains("---- new run of peer-127.0.0.1-9101"));
        assert!(txt[2].ends_with("  second run"));
    }
}
