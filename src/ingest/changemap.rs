//! Changed-block maps given with `--changes NAME=MAPFILE`: a JSON array of
//! `{"offset": BYTES, "length": BYTES}` extents, at any granularity. Every
//! number must be a whole, non-negative JSON integer and every extent must
//! end within the disk: a map that says otherwise was not made for this
//! disk, and trusting it could silently miss changes.

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
}

/// Parses a map and checks it against a disk of `disk_size` bytes; returns
/// the changed byte ranges.
pub fn parse(text: &str, disk_size: u64) -> Result<RangeSet, MapError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| MapError::Json(e.to_string()))?;
    let arr = v.as_array().ok_or(MapError::NotArray)?;
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
