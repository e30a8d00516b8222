//! A human-readable dump of segment files: one line per record with its offset, lengths in hex, LSN, kind,
//! key and value. Golden tests pin the format with it; operators use it to inspect a data directory.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::codec::SEGMENT_HEADER_LEN;
use crate::segment::{parse_segment_name, read_segment_header, scan_records, ScanEnd};
use crate::vfs::{path_in, FileSystem};

fn printable(b: &[u8]) -> String {
    const SHOWN: usize = 48;
    let mut s = b[..b.len().min(SHOWN)].escape_ascii().to_string();
    if b.len() > SHOWN {
        let _ = write!(s, "…(+{})", b.len() - SHOWN);
    }
    s
}

/// Dumps every segment of `dir`, in id order.
pub fn dump_dir(fs: &dyn FileSystem, dir: &Path) -> io::Result<String> {
    let mut ids: Vec<u32> = fs
        .list(dir)?
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .collect();
    ids.sort_unstable();
    let mut out = String::new();
    for id in ids {
        let name = crate::segment::segment_name(id);
        let file = fs.open(&path_in(dir, &name))?;
        let len = file.len()?;
        let _ = writeln!(out, "{name} ({len} bytes)");
        match read_segment_header(&*file, len)? {
            Ok((hid, base_lsn)) => {
                let _ = writeln!(
                    out,
                    "  header: segment {hid}, base lsn {base_lsn}, format v{}",
                    crate::codec::FORMAT_VERSION
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  header: INVALID ({e})");
                continue;
            }
        }
        let end = scan_records(&*file, SEGMENT_HEADER_LEN as u64, len, |offset, r| {
            let h = &r.header;
            let _ = writeln!(
                out,
                "  @{offset:<6} crc={:08x} lsn={} ts={} kind={:?} klen={:#x} vlen={:#x} key=\"{}\" value=\"{}\"",
                h.crc.0,
                h.lsn,
                h.timestamp_micros,
                h.kind,
                h.key_len,
                h.value_len,
                printable(r.key),
                printable(r.value)
            );
            Ok(())
        })?;
        if let ScanEnd::Invalid { offset, error } = end {
            let _ = writeln!(
                out,
                "  @{offset:<6} INVALID: {error} ({} bytes to end of file)",
                len - offset
            );
        }
    }
    Ok(out)
}
