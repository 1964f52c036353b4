//! Checked, zero-copy decoding: every rule is checked first, then borrowed views are handed out.
//!
//! The header, the record slice and the payload structs are `zerocopy` views into the caller's
//! buffer: no copy, no allocation, valid at any alignment. Checks run cheapest first and the CRC
//! (which must read every byte) before the per-record checks, so a corrupted frame never has its
//! records interpreted.

use zerocopy::FromBytes;

use crate::layout::{
    Channel, Direction, EnvPacket, ErrorBody, FrameType, Header, LiveRecord, MAGIC, Quality,
    RAW_CHANNEL_MIN, Reason, Record, TelemetryBase, VERSION,
};

/// Default largest record count accepted in one frame.
pub const DEFAULT_MAX_RECORDS: u16 = 4096;
/// Default oldest accepted reading: 30 days before now (devices store and forward while offline).
pub const DEFAULT_MAX_PAST_US: i64 = 30 * 24 * 3600 * 1_000_000;
/// Default newest accepted reading: 5 minutes after now (device clocks drift).
pub const DEFAULT_MAX_FUTURE_US: i64 = 5 * 60 * 1_000_000;

/// Receiver-side limits applied while checking a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest record count accepted in one frame.
    pub max_records: u16,
    /// How far before `now` a reading's timestamp may be, in microseconds.
    pub max_past_us: i64,
    /// How far after `now` a reading's timestamp may be, in microseconds.
    pub max_future_us: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records: DEFAULT_MAX_RECORDS,
            max_past_us: DEFAULT_MAX_PAST_US,
            max_future_us: DEFAULT_MAX_FUTURE_US,
        }
    }
}

/// Why a frame was refused. Each variant names what was expected and what was found, and maps
/// to a stable [`Reason`] code (see [`DecodeError::reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("truncated frame: expected at least {expected} bytes, found {found}")]
    Truncated {
        /// Header size.
        expected: usize,
        /// Bytes received.
        found: usize,
    },
    /// Wrong magic.
    #[error("bad magic: expected 0x{expected:04x}, found 0x{found:04x}")]
    BadMagic {
        /// 0x4D54.
        expected: u16,
        /// Magic read.
        found: u16,
    },
    /// Unsupported format version.
    #[error("unsupported version: expected {expected}, found {found}")]
    UnsupportedVersion {
        /// Version this decoder speaks.
        expected: u8,
        /// Version read.
        found: u8,
    },
    /// Frame type not defined.
    #[error("unknown frame type 0x{found:02x}")]
    UnknownFrameType {
        /// Type read.
        found: u8,
    },
    /// Frame type defined, but not for this direction.
    #[error("frame type {found:?} is not accepted here (expected a {expected:?} frame)")]
    UnexpectedFrameType {
        /// Direction the decoder accepts.
        expected: Direction,
        /// Type read.
        found: FrameType,
    },
    /// Flag bits that are not defined for this frame type.
    #[error("reserved flag bits set: allowed mask 0x{allowed:04x}, found 0x{found:04x}")]
    ReservedFlags {
        /// Flag bits defined for the frame type.
        allowed: u16,
        /// Flags read.
        found: u16,
    },
    /// Byte count differs from header + payload_len.
    #[error("length mismatch: header says {expected} bytes, received {found}")]
    LengthMismatch {
        /// 32 + payload_len.
        expected: u64,
        /// Bytes received.
        found: u64,
    },
    /// A batch frame with no records.
    #[error("empty batch: expected at least 1 record, found 0")]
    EmptyBatch,
    /// More records than allowed.
    #[error("too many records: limit {limit}, found {found}")]
    TooManyRecords {
        /// Receiver's limit.
        limit: u16,
        /// Count in the header.
        found: u16,
    },
    /// payload_len does not fit count records of the frame type.
    #[error("count mismatch: {count} records need a {expected}-byte payload, found {found}")]
    CountMismatch {
        /// Record count in the header.
        count: u16,
        /// Payload length for that count.
        expected: u32,
        /// payload_len in the header.
        found: u32,
    },
    /// CRC-32C of the payload differs from the header's.
    #[error("payload CRC-32C mismatch: header says 0x{expected:08x}, computed 0x{found:08x}")]
    CrcMismatch {
        /// payload_crc in the header.
        expected: u32,
        /// CRC computed over the received payload.
        found: u32,
    },
    /// A non-finite value on a channel that requires finite values.
    #[error(
        "record {index}: non-finite value on channel 0x{channel:04x} without the FAULT quality bit"
    )]
    NonFiniteValue {
        /// Record index in the frame.
        index: u32,
        /// Channel of the record.
        channel: u16,
    },
    /// A reading time outside the accepted window.
    #[error(
        "record {index}: timestamp {ts_us} us is outside the accepted window [{min_us}, {max_us}]"
    )]
    TimestampOutOfRange {
        /// Record index in the frame.
        index: u32,
        /// Reading time.
        ts_us: i64,
        /// Oldest accepted.
        min_us: i64,
        /// Newest accepted.
        max_us: i64,
    },
    /// Device frames number from 1.
    #[error("sequence number 0: sequences start at 1")]
    ZeroSequence,
}

impl DecodeError {
    /// The stable reason code carried in error frames and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            DecodeError::Truncated { .. } => Reason::Truncated,
            DecodeError::BadMagic { .. } => Reason::BadMagic,
            DecodeError::UnsupportedVersion { .. } => Reason::UnsupportedVersion,
            DecodeError::UnknownFrameType { .. } => Reason::UnknownFrameType,
            DecodeError::UnexpectedFrameType { .. } => Reason::UnexpectedFrameType,
            DecodeError::ReservedFlags { .. } => Reason::ReservedFlags,
            DecodeError::LengthMismatch { .. } => Reason::LengthMismatch,
            DecodeError::EmptyBatch => Reason::EmptyBatch,
            DecodeError::TooManyRecords { .. } => Reason::TooManyRecords,
            DecodeError::CountMismatch { .. } => Reason::CountMismatch,
            DecodeError::CrcMismatch { .. } => Reason::CrcMismatch,
            DecodeError::NonFiniteValue { .. } => Reason::NonFiniteValue,
            DecodeError::TimestampOutOfRange { .. } => Reason::TimestampOutOfRange,
            DecodeError::ZeroSequence => Reason::ZeroSequence,
        }
    }

    /// The `(expected, found)` pair written into an error frame's body (see WIRE.md, Reason codes).
    pub fn expected_found(&self) -> (u64, u64) {
        match *self {
            DecodeError::Truncated { expected, found } => (expected as u64, found as u64),
            DecodeError::BadMagic { expected, found } => (expected.into(), found.into()),
            DecodeError::UnsupportedVersion { expected, found } => (expected.into(), found.into()),
            DecodeError::UnknownFrameType { found } => (0, found.into()),
            DecodeError::UnexpectedFrameType { found, .. } => (0, found.wire().into()),
            DecodeError::ReservedFlags { allowed, found } => (allowed.into(), found.into()),
            DecodeError::LengthMismatch { expected, found } => (expected, found),
            DecodeError::EmptyBatch => (0, 0),
            DecodeError::TooManyRecords { limit, found } => (limit.into(), found.into()),
            DecodeError::CountMismatch {
                expected, found, ..
            } => (expected.into(), found.into()),
            DecodeError::CrcMismatch { expected, found } => (expected.into(), found.into()),
            DecodeError::NonFiniteValue { index, channel } => (index.into(), channel.into()),
            DecodeError::TimestampOutOfRange { index, ts_us, .. } => (index.into(), ts_us as u64),
            DecodeError::ZeroSequence => (1, 0),
        }
    }
}

/// A reading in the common shape every device frame layout expands to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Channel id.
    pub channel: u16,
    /// Quality bits.
    pub quality: u16,
    /// Reading time, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// Value.
    pub value: f64,
}

/// A checked frame: borrowed views into the received bytes.
#[derive(Clone, Copy, Debug)]
pub enum Frame<'a> {
    /// Telemetry batch (device to server).
    Telemetry {
        /// Frame header.
        header: &'a Header,
        /// Base timestamp.
        base: &'a TelemetryBase,
        /// Records (at least one).
        records: &'a [Record],
    },
    /// Environmental packets (device to server).
    Environment {
        /// Frame header.
        header: &'a Header,
        /// Packets (at least one).
        packets: &'a [EnvPacket],
    },
    /// Cumulative ack (server to device); `header.seq` is the acked sequence.
    Ack {
        /// Frame header.
        header: &'a Header,
    },
    /// Error (server to device); `header.seq` is the refused frame's sequence.
    Error {
        /// Frame header.
        header: &'a Header,
        /// Why.
        body: &'a ErrorBody,
    },
    /// Live batch (server to dashboard).
    Live {
        /// Frame header; `seq` is the stream position of the last record.
        header: &'a Header,
        /// Readings.
        records: &'a [LiveRecord],
    },
}

impl<'a> Frame<'a> {
    /// The frame's header.
    pub fn header(&self) -> &'a Header {
        match *self {
            Frame::Telemetry { header, .. }
            | Frame::Environment { header, .. }
            | Frame::Ack { header }
            | Frame::Error { header, .. }
            | Frame::Live { header, .. } => header,
        }
    }

    /// Number of readings a device frame carries (4 per environmental packet); 0 for other frames.
    pub fn reading_count(&self) -> usize {
        match self {
            Frame::Telemetry { records, .. } => records.len(),
            Frame::Environment { packets, .. } => packets.len() * 4,
            _ => 0,
        }
    }

    /// The readings of a device frame, expanded to one shape; empty for other frames.
    #[inline]
    pub fn readings(&self) -> Readings<'a> {
        match *self {
            Frame::Telemetry { base, records, .. } => Readings::Telemetry {
                base: base.base_ts_us.get(),
                records: records.iter(),
            },
            Frame::Environment { packets, .. } => Readings::Environment {
                packets: packets.iter(),
                current: None,
                field: 0,
            },
            _ => Readings::Empty,
        }
    }
}

/// Iterator over the readings of a device frame (see [`Frame::readings`]).
#[derive(Clone, Debug)]
pub enum Readings<'a> {
    /// Telemetry records.
    #[doc(hidden)]
    Telemetry {
        base: i64,
        records: core::slice::Iter<'a, Record>,
    },
    /// Environmental packets, four readings each.
    #[doc(hidden)]
    Environment {
        packets: core::slice::Iter<'a, EnvPacket>,
        current: Option<&'a EnvPacket>,
        field: u8,
    },
    /// Not a device frame.
    #[doc(hidden)]
    Empty,
}

impl Iterator for Readings<'_> {
    type Item = Reading;

    #[inline]
    fn next(&mut self) -> Option<Reading> {
        match self {
            Readings::Telemetry { base, records } => records.next().map(|r| Reading {
                channel: r.channel.get(),
                quality: r.quality.get(),
                ts_us: base.saturating_add(i64::from(r.offset_us.get())),
                value: r.value.get(),
            }),
            Readings::Environment {
                packets,
                current,
                field,
            } => {
                if current.is_none() || *field == 4 {
                    *current = Some(packets.next()?);
                    *field = 0;
                }
                let p = (*current)?;
                let (channel, value) = match *field {
                    0 => (Channel::EnvTemperature, f64::from(p.temperature_c.get())),
                    1 => (Channel::EnvHumidity, f64::from(p.humidity_pct.get())),
                    2 => (Channel::EnvPressure, f64::from(p.pressure_hpa.get())),
                    _ => (Channel::EnvBattery, f64::from(p.battery_mv.get())),
                };
                *field += 1;
                Some(Reading {
                    channel: channel.wire(),
                    quality: p.quality.get(),
                    ts_us: p.ts_us.get(),
                    value,
                })
            }
            Readings::Empty => None,
        }
    }
}

/// Checks `buf` as one frame for `direction` and returns borrowed views into it.
///
/// `now_us` (microseconds since the Unix epoch) anchors the timestamp window of device frames.
pub fn decode<'a>(
    buf: &'a [u8],
    direction: Direction,
    limits: &Limits,
    now_us: i64,
) -> Result<Frame<'a>, DecodeError> {
    let (header, payload) = Header::ref_from_prefix(buf).map_err(|_| DecodeError::Truncated {
        expected: Header::SIZE,
        found: buf.len(),
    })?;
    let frame_type = check_header(header, buf.len(), direction, limits)?;
    let count = header.count.get();
    let payload_len = header.payload_len.get();
    let (prefix, record) = match frame_type {
        FrameType::Telemetry => (TelemetryBase::SIZE, Record::SIZE),
        FrameType::Environment => (0, EnvPacket::SIZE),
        FrameType::Ack => (0, 0),
        FrameType::Error => (0, ErrorBody::SIZE),
        FrameType::Live => (0, LiveRecord::SIZE),
    };
    let expected_len = prefix as u64 + u64::from(count) * record as u64;
    if u64::from(payload_len) != expected_len {
        return Err(DecodeError::CountMismatch {
            count,
            expected: expected_len as u32,
            found: payload_len,
        });
    }
    let crc = crc32c::crc32c(payload);
    if crc != header.payload_crc.get() {
        return Err(DecodeError::CrcMismatch {
            expected: header.payload_crc.get(),
            found: crc,
        });
    }
    // Lengths were checked above, so the views below cannot fail; map_err keeps it panic-free anyway.
    let short = DecodeError::CountMismatch {
        count,
        expected: expected_len as u32,
        found: payload_len,
    };
    match frame_type {
        FrameType::Telemetry => {
            let (base, rest) = TelemetryBase::ref_from_prefix(payload).map_err(|_| short)?;
            let records = <[Record]>::ref_from_bytes(rest).map_err(|_| short)?;
            check_records(base.base_ts_us.get(), records, limits, now_us)?;
            Ok(Frame::Telemetry {
                header,
                base,
                records,
            })
        }
        FrameType::Environment => {
            let packets = <[EnvPacket]>::ref_from_bytes(payload).map_err(|_| short)?;
            check_packets(packets, limits, now_us)?;
            Ok(Frame::Environment { header, packets })
        }
        FrameType::Ack => Ok(Frame::Ack { header }),
        FrameType::Error => Ok(Frame::Error {
            header,
            body: ErrorBody::ref_from_bytes(payload).map_err(|_| short)?,
        }),
        FrameType::Live => Ok(Frame::Live {
            header,
            records: <[LiveRecord]>::ref_from_bytes(payload).map_err(|_| short)?,
        }),
    }
}

/// Header-only checks, cheapest first.
fn check_header(
    header: &Header,
    received: usize,
    direction: Direction,
    limits: &Limits,
) -> Result<FrameType, DecodeError> {
    if header.magic.get() != MAGIC {
        return Err(DecodeError::BadMagic {
            expected: MAGIC,
            found: header.magic.get(),
        });
    }
    if header.version != VERSION {
        return Err(DecodeError::UnsupportedVersion {
            expected: VERSION,
            found: header.version,
        });
    }
    let frame_type =
        FrameType::from_wire(header.frame_type).ok_or(DecodeError::UnknownFrameType {
            found: header.frame_type,
        })?;
    if frame_type.direction() != direction {
        return Err(DecodeError::UnexpectedFrameType {
            expected: direction,
            found: frame_type,
        });
    }
    let flags = header.flags.get();
    if flags & !frame_type.allowed_flags() != 0 {
        return Err(DecodeError::ReservedFlags {
            allowed: frame_type.allowed_flags(),
            found: flags,
        });
    }
    let expected = Header::SIZE as u64 + u64::from(header.payload_len.get());
    if expected != received as u64 {
        return Err(DecodeError::LengthMismatch {
            expected,
            found: received as u64,
        });
    }
    let count = header.count.get();
    if direction == Direction::DeviceToServer {
        if header.seq.get() == 0 {
            return Err(DecodeError::ZeroSequence);
        }
        if count == 0 {
            return Err(DecodeError::EmptyBatch);
        }
        if count > limits.max_records {
            return Err(DecodeError::TooManyRecords {
                limit: limits.max_records,
                found: count,
            });
        }
    }
    Ok(frame_type)
}

fn window(limits: &Limits, now_us: i64) -> (i64, i64) {
    (
        now_us.saturating_sub(limits.max_past_us),
        now_us.saturating_add(limits.max_future_us),
    )
}

/// `true` when `bits` is NaN or infinite (all exponent bits set).
#[inline(always)]
fn non_finite_f64(bits: u64) -> bool {
    bits & 0x7ff0_0000_0000_0000 == 0x7ff0_0000_0000_0000
}

/// Whether a non-finite value is acceptable for this channel and quality.
#[inline(always)]
fn finite_required(channel: u16, quality: u16) -> bool {
    channel < RAW_CHANNEL_MIN && quality & Quality::Fault.wire() == 0
}

/// One branch-free pass over the records that only asks "is any value NaN or infinite?" and
/// "is any reading later than the window?", with adds, ands, ors and subtractions only (no
/// compares or branches per record, so it vectorizes); the exact per-record rules run only when
/// that pass finds something, to accept a raw-channel or FAULT value or name the first offender.
fn check_records(
    base: i64,
    records: &[Record],
    limits: &Limits,
    now_us: i64,
) -> Result<(), DecodeError> {
    const EXPONENT: u64 = 0x7ff0_0000_0000_0000;
    let (min_us, max_us) = window(limits, now_us);
    // Largest offset with base + offset <= max_us; -1 when there is none, which also keeps the
    // subtraction below from overflowing (offsets are 0..=u32::MAX).
    let max_offset = max_us.saturating_sub(base).max(-1);
    let mut non_finite = 0u64;
    let mut late = 0i64;
    for r in records {
        // Bit 63 ends up set iff all exponent bits are set (NaN or infinite).
        non_finite |= (r.value.get().to_bits() & EXPONENT).wrapping_add(1 << 52);
        // Negative iff base + offset > max_us.
        late |= max_offset - i64::from(r.offset_us.get());
    }
    if non_finite >> 63 != 0 {
        for (i, r) in records.iter().enumerate() {
            if non_finite_f64(r.value.get().to_bits())
                && finite_required(r.channel.get(), r.quality.get())
            {
                return Err(DecodeError::NonFiniteValue {
                    index: i as u32,
                    channel: r.channel.get(),
                });
            }
        }
    }
    if base < min_us || late < 0 {
        for (i, r) in records.iter().enumerate() {
            let ts_us = base.saturating_add(i64::from(r.offset_us.get()));
            if ts_us < min_us || ts_us > max_us {
                return Err(DecodeError::TimestampOutOfRange {
                    index: i as u32,
                    ts_us,
                    min_us,
                    max_us,
                });
            }
        }
    }
    Ok(())
}

fn check_packets(packets: &[EnvPacket], limits: &Limits, now_us: i64) -> Result<(), DecodeError> {
    let (min_us, max_us) = window(limits, now_us);
    for (i, p) in packets.iter().enumerate() {
        let finite = p.temperature_c.get().is_finite()
            && p.humidity_pct.get().is_finite()
            && p.pressure_hpa.get().is_finite();
        if !finite && p.quality.get() & Quality::Fault.wire() == 0 {
            let channel = if !p.temperature_c.get().is_finite() {
                Channel::EnvTemperature
            } else if !p.humidity_pct.get().is_finite() {
                Channel::EnvHumidity
            } else {
                Channel::EnvPressure
            };
            return Err(DecodeError::NonFiniteValue {
                index: i as u32,
                channel: channel.wire(),
            });
        }
        let ts_us = p.ts_us.get();
        if ts_us < min_us || ts_us > max_us {
            return Err(DecodeError::TimestampOutOfRange {
                index: i as u32,
                ts_us,
                min_us,
                max_us,
            });
        }
    }
    Ok(())
}

/// Views a frame that was already checked by [`decode`] (for example when it is handed from the
/// edge to the writer), without checking it again. Returns `None` if the bytes are not even
/// shaped like a frame; never panics.
pub fn view(buf: &[u8]) -> Option<Frame<'_>> {
    let (header, payload) = Header::ref_from_prefix(buf).ok()?;
    let frame_type = FrameType::from_wire(header.frame_type)?;
    Some(match frame_type {
        FrameType::Telemetry => {
            let (base, rest) = TelemetryBase::ref_from_prefix(payload).ok()?;
            Frame::Telemetry {
                header,
                base,
                records: <[Record]>::ref_from_bytes(rest).ok()?,
            }
        }
        FrameType::Environment => Frame::Environment {
            header,
            packets: <[EnvPacket]>::ref_from_bytes(payload).ok()?,
        },
        FrameType::Ack => Frame::Ack { header },
        FrameType::Error => Frame::Error {
            header,
            body: ErrorBody::ref_from_bytes(payload).ok()?,
        },
        FrameType::Live => Frame::Live {
            header,
            records: <[LiveRecord]>::ref_from_bytes(payload).ok()?,
        },
    })
}
