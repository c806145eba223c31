//! The frames a segment is a run of, all integers big-endian:
//!
//! ```text
//! u32 frame length | u32 CRC-32 of what follows | u64 sequence | u16 key length | dedupe key | record
//! ```
//!
//! A frame that does not check out (short, torn, or failing its CRC) is never returned.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

/// The bytes of a frame before its dedupe key.
pub const HEADER: usize = 18;

/// Appends a frame to `buf`; returns its length.
pub fn put_frame(
    buf: &mut Vec<u8>,
    seq: u64,
    key: Option<&[u8]>,
    record: &[u8],
) -> std::io::Result<u32> {
    let key = key.unwrap_or_default();
    let key_len = u16::try_from(key.len())
        .map_err(|_| std::io::Error::other("a dedupe key longer than 64 KiB"))?;
    let frame_len = u32::try_from(HEADER + key.len() + record.len())
        .map_err(|_| std::io::Error::other("a record over 4 GiB"))?;
    let start = buf.len();
    buf.extend_from_slice(&frame_len.to_be_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&key_len.to_be_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(record);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(frame_len)
}

/// A frame's sequence, dedupe key, record and length.
pub type Frame = (u64, Option<Vec<u8>>, Bytes, u32);

/// A frame's sequence, dedupe key and record.
pub type FrameContent = (u64, Option<Vec<u8>>, Bytes);

/// The sequence and the key length of a frame that starts with at least a header.
pub fn seq_and_key_len(frame: &[u8]) -> (u64, usize) {
    let seq = u64::from_be_bytes(frame[8..16].try_into().unwrap_or_default());
    (seq, usize::from(u16::from_be_bytes([frame[16], frame[17]])))
}

/// The frame at `offset`, at most `room` bytes long; `None` when it is short, torn or
/// fails its checksum.
pub fn read_frame_at(file: &File, offset: u64, room: u64) -> std::io::Result<Option<Frame>> {
    if room < HEADER as u64 {
        return Ok(None);
    }
    let mut head = [0u8; 4];
    file.read_exact_at(&mut head, offset)?;
    let frame_len = u32::from_be_bytes(head);
    if (frame_len as usize) < HEADER || u64::from(frame_len) > room {
        return Ok(None);
    }
    let mut buf = vec![0u8; frame_len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(parse_frame(Bytes::from(buf)))
}

/// A whole frame read into `buf` (exactly its bytes); `None` when its length field
/// disagrees, or it is torn or fails its checksum.
pub fn parse_frame(buf: Bytes) -> Option<Frame> {
    if buf.len() < HEADER {
        return None;
    }
    let frame_len = u32::from_be_bytes(buf[..4].try_into().unwrap_or_default());
    let crc = u32::from_be_bytes(buf[4..8].try_into().unwrap_or_default());
    if frame_len as usize != buf.len() || crc32fast::hash(&buf[8..]) != crc {
        return None;
    }
    let (seq, key_len) = seq_and_key_len(&buf);
    if HEADER + key_len > buf.len() {
        return None;
    }
    let key = (key_len > 0).then(|| buf[HEADER..HEADER + key_len].to_vec());
    let record = buf.slice(HEADER + key_len..);
    Some((seq, key, record, frame_len))
}
