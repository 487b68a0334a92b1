//! A reader for `/proc/self/mountinfo`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// The directory of the file system that is mounted here ("/" unless a bind of a subtree).
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options, e.g. "ro,nosuid,nodev,noexec,relatime".
    pub options: String,
    pub fs_type: String,
    pub source: String,
    /// Per-superblock options, e.g. "rw,size=1024k,mode=750".
    pub super_options: String,
}

impl MountInfo {
    /// Whether `opt` (a whole option such as "nodev" or "mode=750") appears in the per-mount or the
    /// per-superblock options.
    pub fn has_option(&self, opt: &str) -> bool {
        self.options
            .split(',')
            .chain(self.super_options.split(','))
            .any(|o| o == opt)
    }
}

/// Parses `/proc/self/mountinfo` text (see proc(5)).
///
/// Octal escapes such as `\040` (space) are decoded; the optional fields between the mount options
/// and the " - " separator are skipped. Lines that do not have the expected shape are skipped too,
/// so one odd entry cannot hide the rest of the table.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    // Fields are separated by single spaces; the kernel escapes spaces inside fields, so an empty
    // field (e.g. an empty source) must be kept rather than collapsed.
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 8 {
        return None;
    }
    let sep = 6 + fields[6..].iter().position(|f| *f == "-")?;
    let after = &fields[sep + 1..];
    if after.len() < 2 {
        return None;
    }
    Some(MountInfo {
        mount_id: fields[0].parse().ok()?,
        parent_id: fields[1].parse().ok()?,
        root: unescape_lossy(fields[3]),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        options: fields[5].to_owned(),
        fs_type: unescape_lossy(after[0]),
        source: unescape_lossy(after[1]),
        super_options: after.get(2).map(|s| unescape_lossy(s)).unwrap_or_default(),
    })
}

/// Decodes the kernel's `\ooo` escapes (used for space, tab, newline and backslash).
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            // "\777" does not fit a byte; the kernel never writes it, so keep it literally.
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn unescape_lossy(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}
