//! Encoders that append frames to a caller-owned buffer: no allocation per record or per frame
//! once the buffer has grown to its working size (the simulator reuses one buffer per device).

use zerocopy::IntoBytes;
use zerocopy::little_endian::{F32, F64, I64, U16, U32, U64};

use crate::layout::{
    EnvPacket, ErrorBody, FrameType, Header, LiveRecord, MAGIC, Reason, Record, TelemetryBase,
    VERSION,
};

/// Why a frame could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The header's count field is 16 bits wide.
    #[error("too many records for one frame: at most {limit}, got {found}")]
    TooManyRecords {
        /// 65535.
        limit: usize,
        /// Records given.
        found: usize,
    },
}

/// The header fields a sender chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMeta {
    /// Sending device (or the device a server frame is about).
    pub device_id: u64,
    /// Sequence number (device frames), acked sequence (ack), refused sequence (error), or position (live).
    pub seq: u64,
    /// Frame flags.
    pub flags: u16,
}

impl Record {
    /// A record from native values.
    pub fn new(channel: u16, quality: u16, offset_us: u32, value: f64) -> Self {
        Record {
            channel: U16::new(channel),
            quality: U16::new(quality),
            offset_us: U32::new(offset_us),
            value: F64::new(value),
        }
    }
}

impl EnvPacket {
    /// A packet from native values.
    pub fn new(
        ts_us: i64,
        temperature_c: f32,
        humidity_pct: f32,
        pressure_hpa: f32,
        battery_mv: u16,
        quality: u16,
    ) -> Self {
        EnvPacket {
            ts_us: I64::new(ts_us),
            temperature_c: F32::new(temperature_c),
            humidity_pct: F32::new(humidity_pct),
            pressure_hpa: F32::new(pressure_hpa),
            battery_mv: U16::new(battery_mv),
            quality: U16::new(quality),
        }
    }
}

impl LiveRecord {
    /// A live record from native values.
    pub fn new(device_id: u64, channel: u16, quality: u16, ts_us: i64, value: f64) -> Self {
        LiveRecord {
            device_id: U64::new(device_id),
            ts_us: I64::new(ts_us),
            value: F64::new(value),
            channel: U16::new(channel),
            quality: U16::new(quality),
        }
    }
}

impl ErrorBody {
    /// An error body from native values.
    pub fn new(reason: Reason, rejected_type: u8, expected: u64, found: u64) -> Self {
        ErrorBody {
            reason: U16::new(reason.wire()),
            rejected_type,
            reserved: 0,
            expected: U64::new(expected),
            found: U64::new(found),
        }
    }
}

fn header(frame_type: FrameType, meta: FrameMeta, count: u16, payload: &[&[u8]]) -> Header {
    let mut crc = 0u32;
    let mut len = 0usize;
    for part in payload {
        crc = crc32c::crc32c_append(crc, part);
        len += part.len();
    }
    Header {
        magic: U16::new(MAGIC),
        version: VERSION,
        frame_type: frame_type.wire(),
        flags: U16::new(meta.flags),
        count: U16::new(count),
        device_id: U64::new(meta.device_id),
        seq: U64::new(meta.seq),
        payload_len: U32::new(len as u32),
        payload_crc: U32::new(crc),
    }
}

/// Appends one frame built from payload parts; returns the frame's byte range in `out`.
fn append(
    out: &mut Vec<u8>,
    frame_type: FrameType,
    meta: FrameMeta,
    count: usize,
    payload: &[&[u8]],
) -> Result<core::ops::Range<usize>, EncodeError> {
    let count = u16::try_from(count).map_err(|_| EncodeError::TooManyRecords {
        limit: u16::MAX as usize,
        found: count,
    })?;
    let start = out.len();
    out.extend_from_slice(header(frame_type, meta, count, payload).as_bytes());
    for part in payload {
        out.extend_from_slice(part);
    }
    Ok(start..out.len())
}

/// Appends a telemetry frame; returns its byte range in `out`.
pub fn encode_telemetry(
    out: &mut Vec<u8>,
    meta: FrameMeta,
    base_ts_us: i64,
    records: &[Record],
) -> Result<core::ops::Range<usize>, EncodeError> {
    let base = TelemetryBase {
        base_ts_us: I64::new(base_ts_us),
    };
    append(
        out,
        FrameType::Telemetry,
        meta,
        records.len(),
        &[base.as_bytes(), records.as_bytes()],
    )
}

/// Appends an environmental frame; returns its byte range in `out`.
pub fn encode_environment(
    out: &mut Vec<u8>,
    meta: FrameMeta,
    packets: &[EnvPacket],
) -> Result<core::ops::Range<usize>, EncodeError> {
    append(
        out,
        FrameType::Environment,
        meta,
        packets.len(),
        &[packets.as_bytes()],
    )
}

/// Appends a cumulative ack for `acked_seq`; returns its byte range in `out`.
pub fn encode_ack(out: &mut Vec<u8>, device_id: u64, acked_seq: u64) -> core::ops::Range<usize> {
    let meta = FrameMeta {
        device_id,
        seq: acked_seq,
        flags: 0,
    };
    let start = out.len();
    out.extend_from_slice(header(FrameType::Ack, meta, 0, &[]).as_bytes());
    start..out.len()
}

/// Appends an error frame refusing frame `seq`; returns its byte range in `out`.
pub fn encode_error(
    out: &mut Vec<u8>,
    device_id: u64,
    seq: u64,
    body: &ErrorBody,
) -> core::ops::Range<usize> {
    let meta = FrameMeta {
        device_id,
        seq,
        flags: 0,
    };
    let start = out.len();
    out.extend_from_slice(header(FrameType::Error, meta, 1, &[body.as_bytes()]).as_bytes());
    out.extend_from_slice(body.as_bytes());
    start..out.len()
}

/// Appends a live frame whose last record sits at stream `position`; returns its byte range.
pub fn encode_live(
    out: &mut Vec<u8>,
    position: u64,
    flags: u16,
    records: &[LiveRecord],
) -> Result<core::ops::Range<usize>, EncodeError> {
    let meta = FrameMeta {
        device_id: 0,
        seq: position,
        flags,
    };
    append(
        out,
        FrameType::Live,
        meta,
        records.len(),
        &[records.as_bytes()],
    )
}

/// Builds a telemetry frame record by record, straight into the output buffer (no staging slice).
///
/// ```
/// # use codecs::{TelemetryWriter, FrameMeta};
/// let mut buf = Vec::with_capacity(1024);
/// let mut w = TelemetryWriter::begin(&mut buf, FrameMeta { device_id: 7, seq: 1, flags: 0 }, 1_700_000_000_000_000);
/// w.push(1, 0, 0, 21.5).unwrap();
/// w.push(2, 0, 10, 40.0).unwrap();
/// let frame = w.finish();
/// assert_eq!(frame.len(), 32 + 8 + 2 * 16);
/// ```
pub struct TelemetryWriter<'a> {
    /// Output buffer; the frame starts at `start`.
    out: &'a mut Vec<u8>,
    /// Where this frame's header starts in `out`.
    start: usize,
    /// Header fields given at `begin`.
    meta: FrameMeta,
    /// Records pushed so far.
    count: u16,
}

impl<'a> TelemetryWriter<'a> {
    /// Starts a frame at the end of `out`.
    pub fn begin(out: &'a mut Vec<u8>, meta: FrameMeta, base_ts_us: i64) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0u8; Header::SIZE]);
        out.extend_from_slice(&base_ts_us.to_le_bytes());
        TelemetryWriter {
            out,
            start,
            meta,
            count: 0,
        }
    }

    /// Appends one record.
    pub fn push(
        &mut self,
        channel: u16,
        quality: u16,
        offset_us: u32,
        value: f64,
    ) -> Result<(), EncodeError> {
        if self.count == u16::MAX {
            return Err(EncodeError::TooManyRecords {
                limit: u16::MAX as usize,
                found: usize::from(u16::MAX) + 1,
            });
        }
        self.out
            .extend_from_slice(Record::new(channel, quality, offset_us, value).as_bytes());
        self.count += 1;
        Ok(())
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether no record was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the header (length, count, CRC) and returns the finished frame.
    pub fn finish(self) -> &'a [u8] {
        let payload_start = self.start + Header::SIZE;
        let h = header(
            FrameType::Telemetry,
            self.meta,
            self.count,
            &[&self.out[payload_start..]],
        );
        self.out[self.start..payload_start].copy_from_slice(h.as_bytes());
        &self.out[self.start..]
    }
}
