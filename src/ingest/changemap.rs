//! Changed-block maps given with `--changes NAME=MAPFILE`, in one of two
//! forms, told apart by their keys:
//!
//! - cbtfs's own: a JSON array of `{"offset": BYTES, "length": BYTES}`
//!   extents, at any granularity, each a changed range.
//! - the output of `qemu-img map --output=json` (extents with `"start"`,
//!   `"length"`, `"present"`, `"zero"`, `"data"`, `"depth"`). It must cover
//!   the whole disk, from 0 to its size, without gaps. Two kinds exist:
//!   - a dirty-bitmap map, made by reading a bitmap through qemu's NBD
//!     client with `x-dirty-bitmap=qemu:dirty-bitmap:NAME`, which reports
//!     dirty extents as unallocated: recognised by extents that are neither
//!     present nor zero, which a plain allocation map never has. The
//!     changed ranges are the extents with `"data": false`.
//!   - an allocation map of an overlay whose backing file is the state at
//!     the previous checkpoint: the changed ranges are the extents present
//!     in the top layer (`"depth": 0` and `"present": true`, data or zeroed
//!     clusters alike); deeper extents come from the backing file, and
//!     extents present nowhere read as zeros in both states.
//!
//! Every number must be a whole, non-negative JSON integer and every extent
//! must end within the disk: a map that says otherwise was not made for
//! this disk, and trusting it could silently miss changes.

use crate::ranges::RangeSet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("expected a JSON array of {{\"offset\", \"length\"}} objects")]
    NotArray,
    #[error("extent {index}: expected an object with \"offset\" and \"length\"")]
    NotObject { index: usize },
    #[error("extent {index}: \"{field}\" is missing")]
    Missing { index: usize, field: &'static str },
    #[error("extent {index}: \"{field}\" must be a whole number of bytes from 0 to 2^64-1, got {value}")]
    BadNumber { index: usize, field: &'static str, value: String },
    #[error("extent {index}: offset {offset} + length {length} overflows")]
    Overflow { index: usize, offset: u64, length: u64 },
    #[error("extent {index} (offset {offset}, length {length}) ends past the end of the disk ({size} bytes)")]
    PastEnd { index: usize, offset: u64, length: u64, size: u64 },
    #[error("extent {index}: \"{field}\" must be true or false")]
    BadFlag { index: usize, field: &'static str },
    #[error("qemu-img map extent {index} starts at {start}, expected {expected}: a map of the whole disk has no gaps")]
    Gap { index: usize, start: u64, expected: u64 },
    #[error("the qemu-img map covers {covered} bytes, the disk has {size}: it is not a map of this disk")]
    Coverage { covered: u64, size: u64 },
}

/// Parses a map and checks it against a disk of `disk_size` bytes; returns
/// the changed byte ranges.
pub fn parse(text: &str, disk_size: u64) -> Result<RangeSet, MapError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| MapError::Json(e.to_string()))?;
    let arr = v.as_array().ok_or(MapError::NotArray)?;
    if arr.first().and_then(|e| e.as_object()).is_some_and(|o| o.contains_key("start")) {
        return parse_qemu_img_map(arr, disk_size);
    }
    let mut ranges = Vec::with_capacity(arr.len());
    for (index, ext) in arr.iter().enumerate() {
        let obj = ext.as_object().ok_or(MapError::NotObject { index })?;
        let num = |field: &'static str| -> Result<u64, MapError> {
            let val = obj.get(field).ok_or(MapError::Missing { index, field })?;
            val.as_u64().ok_or_else(|| MapError::BadNumber { index, field, value: val.to_string() })
        };
        let offset = num("offset")?;
        let length = num("length")?;
        let end = offset.checked_add(length).ok_or(MapError::Overflow { index, offset, length })?;
        if end > disk_size {
            return Err(MapError::PastEnd { index, offset, length, size: disk_size });
        }
        ranges.push(offset..end);
    }
    Ok(RangeSet::from_ranges(ranges))
}

/// One extent of `qemu-img map --output=json`.
struct QemuExtent {
    start: u64,
    end: u64,
    present: bool,
    zero: bool,
    data: bool,
    depth: u64,
}

fn parse_qemu_img_map(arr: &[serde_json::Value], disk_size: u64) -> Result<RangeSet, MapError> {
    let mut extents = Vec::with_capacity(arr.len());
    let mut expected = 0u64;
    for (index, ext) in arr.iter().enumerate() {
        let obj = ext.as_object().ok_or(MapError::NotObject { index })?;
        let num = |field: &'static str| -> Result<u64, MapError> {
            let val = obj.get(field).ok_or(MapError::Missing { index, field })?;
            val.as_u64().ok_or_else(|| MapError::BadNumber { index, field, value: val.to_string() })
        };
        let flag = |field: &'static str| -> Result<bool, MapError> {
            obj.get(field).ok_or(MapError::Missing { index, field })?.as_bool().ok_or(MapError::BadFlag { index, field })
        };
        let (start, length) = (num("start")?, num("length")?);
        let end = start.checked_add(length).ok_or(MapError::Overflow { index, offset: start, length })?;
        if end > disk_size {
            return Err(MapError::PastEnd { index, offset: start, length, size: disk_size });
        }
        if start != expected {
            return Err(MapError::Gap { index, start, expected });
        }
        expected = end;
        extents.push(QemuExtent { start, end, present: flag("present")?, zero: flag("zero")?, data: flag("data")?, depth: num("depth")? });
    }
    if expected != disk_size {
        return Err(MapError::Coverage { covered: expected, size: disk_size });
    }
    let dirty_bitmap = extents.iter().any(|e| !e.present && !e.zero);
    let changed = extents
        .iter()
        .filter(|e| if dirty_bitmap { !e.data } else { e.depth == 0 && e.present })
        .map(|e| e.start..e.end);
    Ok(RangeSet::from_ranges(changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_merges() {
        let r = parse(r#"[{"offset":4096,"length":4096},{"offset":0,"length":4096},{"offset":100000,"length":0}]"#, 1 << 20)
            .unwrap();
        assert_eq!(r.runs(), std::slice::from_ref(&(0..8192)));
        assert!(parse("[]", 0).unwrap().is_empty());
        // Extra fields are ignored (tools add their own).
        assert!(parse(r#"[{"offset":0,"length":1,"depth":0}]"#, 1).is_ok());
    }

    fn qemu_extent(start: u64, length: u64, present: bool, zero: bool, data: bool, depth: u64) -> String {
        format!(
            r#"{{"start":{start},"length":{length},"depth":{depth},"present":{present},"zero":{zero},"data":{data},"compressed":false}}"#
        )
    }

    #[test]
    fn qemu_img_maps() {
        let mib = 1u64 << 20;
        // Dirty-bitmap map (x-dirty-bitmap): dirty extents are neither
        // present nor data nor zero; clean ones look allocated.
        let dirty = format!(
            "[{},{},{},{}]",
            qemu_extent(0, mib, true, false, true, 0),
            qemu_extent(mib, 64 * 1024, false, false, false, 0),
            qemu_extent(mib + 64 * 1024, 2 * mib - 64 * 1024, true, false, true, 0),
            qemu_extent(3 * mib, mib, false, false, false, 0),
        );
        let r = parse(&dirty, 4 * mib).unwrap();
        assert_eq!(r.runs(), &[mib..mib + 64 * 1024, 3 * mib..4 * mib]);
        // Allocation map of an overlay: top-layer data and zeroed clusters
        // changed; backing data and holes not.
        let overlay = format!(
            "[{},{},{},{}]",
            qemu_extent(0, mib, true, false, true, 1),
            qemu_extent(mib, mib, true, false, true, 0),
            qemu_extent(2 * mib, mib, true, true, false, 0),
            qemu_extent(3 * mib, mib, false, true, false, 1),
        );
        assert_eq!(parse(&overlay, 4 * mib).unwrap().runs(), std::slice::from_ref(&(mib..3 * mib)));
        // Not the whole disk, gaps, bad flags: refused.
        assert!(matches!(parse(&overlay, 5 * mib), Err(MapError::Coverage { .. })));
        assert!(matches!(parse(&overlay, 3 * mib), Err(MapError::PastEnd { .. })));
        let gap = format!("[{},{}]", qemu_extent(0, mib, true, false, true, 0), qemu_extent(2 * mib, mib, true, false, true, 0));
        assert!(matches!(parse(&gap, 3 * mib), Err(MapError::Gap { index: 1, .. })));
        let flag = r#"[{"start":0,"length":1,"depth":0,"present":1,"zero":false,"data":true}]"#;
        assert!(matches!(parse(flag, 1), Err(MapError::BadFlag { field: "present", .. })));
        let missing = r#"[{"start":0,"length":1,"depth":0,"zero":false,"data":true}]"#;
        assert!(matches!(parse(missing, 1), Err(MapError::Missing { field: "present", .. })));
    }

    #[test]
    fn refuses_bad_maps() {
        let size = 1 << 20;
        type Check = fn(&MapError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, MapError::Json(_))),
            ("{", |e| matches!(e, MapError::Json(_))),
            (r#"{"offset":0}"#, |e| *e == MapError::NotArray),
            ("[1]", |e| matches!(e, MapError::NotObject { index: 0 })),
            (r#"[{"length":1}]"#, |e| matches!(e, MapError::Missing { field: "offset", .. })),
            (r#"[{"offset":-1,"length":1}]"#, |e| matches!(e, MapError::BadNumber { .. })),
            (r#"[{"offset":0,"length":-4096}]"#, |e| matches!(e, MapError::BadNumber { .. })),
            (r#"[{"offset":1.5,"length":1}]"#, |e| matches!(e, MapError::BadNumber { .. })),
            (r#"[{"offset":"0","length":1}]"#, |e| matches!(e, MapError::BadNumber { .. })),
            (r#"[{"offset":99999999999999999999999,"length":1}]"#, |e| matches!(e, MapError::BadNumber { .. })),
            (r#"[{"offset":18446744073709551615,"length":1}]"#, |e| matches!(e, MapError::Overflow { .. })),
            (r#"[{"offset":1048576,"length":1}]"#, |e| matches!(e, MapError::PastEnd { .. })),
            (r#"[{"offset":0,"length":1048577}]"#, |e| matches!(e, MapError::PastEnd { .. })),
        ];
        for (text, want) in cases {
            let got = parse(text, size).expect_err(text);
            assert!(want(&got), "{text}: got {got:?}");
            assert!(!got.to_string().contains('\n'), "one-line messages");
        }
    }
}
