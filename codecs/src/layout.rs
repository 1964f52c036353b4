//! The single declaration of wire format v1: every struct, enum and constant on the wire.
//!
//! Everything else is derived from this file: the Rust types (by the macros below), the C header
//! (`include/telemux_wire_layout.h`), the JS layout (`js/layout.mjs`) and the byte tables in
//! `WIRE.md`, all written by `cargo run -p codecs --bin wire-gen` and checked by
//! `tests/generated.rs`, so they cannot drift apart.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Primitive field types that may appear on the wire (all little-endian, fixed size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Signed 64-bit integer (two's complement).
    I64,
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
}

impl WireType {
    /// Size in bytes.
    pub const fn size(self) -> usize {
        match self {
            WireType::U8 => 1,
            WireType::U16 => 2,
            WireType::U32 | WireType::F32 => 4,
            WireType::U64 | WireType::I64 | WireType::F64 => 8,
        }
    }
}

/// One field of a wire struct, as described to the code generators.
#[derive(Clone, Copy, Debug)]
pub struct FieldLayout {
    /// Field name (snake_case, shared by Rust, C and JS).
    pub name: &'static str,
    /// Wire type.
    pub ty: WireType,
    /// Byte offset from the start of the struct.
    pub offset: usize,
    /// Meaning, units and rules, as written in the declaration.
    pub doc: &'static str,
}

/// A wire struct, as described to the code generators.
#[derive(Clone, Copy, Debug)]
pub struct StructLayout {
    /// Rust type name.
    pub rust_name: &'static str,
    /// C type name.
    pub c_name: &'static str,
    /// What the struct is for.
    pub doc: &'static str,
    /// Size in bytes (no padding: the sum of the field sizes).
    pub size: usize,
    /// Fields in wire order.
    pub fields: &'static [FieldLayout],
}

/// One named value of a wire enum or flag set.
#[derive(Clone, Copy, Debug)]
pub struct EnumValue {
    /// Rust variant name (CamelCase); generators derive SCREAMING_SNAKE from it.
    pub name: &'static str,
    /// Value on the wire.
    pub value: u64,
    /// Meaning.
    pub doc: &'static str,
}

/// A wire enum or flag set, as described to the code generators.
#[derive(Clone, Copy, Debug)]
pub struct EnumLayout {
    /// Rust type name.
    pub rust_name: &'static str,
    /// Prefix of the C/JS constant names (`TM_FRAME_`, ...).
    pub prefix: &'static str,
    /// Underlying wire type.
    pub ty: WireType,
    /// Whether values are bit flags (combined with OR) rather than exclusive values.
    pub is_flags: bool,
    /// What the enum is for.
    pub doc: &'static str,
    /// Named values.
    pub values: &'static [EnumValue],
}

macro_rules! wire_ty {
    (u8) => {
        u8
    };
    (u16) => {
        zerocopy::little_endian::U16
    };
    (u32) => {
        zerocopy::little_endian::U32
    };
    (u64) => {
        zerocopy::little_endian::U64
    };
    (i64) => {
        zerocopy::little_endian::I64
    };
    (f32) => {
        zerocopy::little_endian::F32
    };
    (f64) => {
        zerocopy::little_endian::F64
    };
}

macro_rules! wire_type_tag {
    (u8) => {
        WireType::U8
    };
    (u16) => {
        WireType::U16
    };
    (u32) => {
        WireType::U32
    };
    (u64) => {
        WireType::U64
    };
    (i64) => {
        WireType::I64
    };
    (f32) => {
        WireType::F32
    };
    (f64) => {
        WireType::F64
    };
}

/// Declares a `#[repr(C)]` zero-copy wire struct plus its `LAYOUT` description.
macro_rules! wire_struct {
    (
        $(#[doc = $doc:literal])*
        pub struct $name:ident as $cname:literal {
            $( $(#[doc = $fdoc:literal])* pub $field:ident : $ty:ident, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(C)]
        pub struct $name {
            $( $(#[doc = $fdoc])* pub $field: wire_ty!($ty), )*
        }

        impl $name {
            /// Size on the wire in bytes.
            pub const SIZE: usize = core::mem::size_of::<Self>();
            /// Field-by-field description, the source of the C header, JS layout and WIRE.md tables.
            pub const LAYOUT: StructLayout = StructLayout {
                rust_name: stringify!($name),
                c_name: $cname,
                doc: concat!($($doc, "\n"),*),
                size: core::mem::size_of::<Self>(),
                fields: &[ $( FieldLayout {
                    name: stringify!($field),
                    ty: wire_type_tag!($ty),
                    offset: core::mem::offset_of!($name, $field),
                    doc: concat!($($fdoc, "\n"),*),
                }, )* ],
            };
        }
    };
}

/// Declares a wire enum (or flag set) plus its `LAYOUT` description.
macro_rules! wire_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident : $repr:ident, prefix $prefix:literal, flags $flags:literal {
            $( $(#[doc = $vdoc:literal])* $variant:ident = $value:literal, )*
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr($repr)]
        pub enum $name {
            $( $(#[doc = $vdoc])* $variant = $value, )*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];
            /// Description for the code generators.
            pub const LAYOUT: EnumLayout = EnumLayout {
                rust_name: stringify!($name),
                prefix: $prefix,
                ty: wire_type_tag!($repr),
                is_flags: $flags,
                doc: concat!($($doc, "\n"),*),
                values: &[ $( EnumValue { name: stringify!($variant), value: $value, doc: concat!($($vdoc, "\n"),*) }, )* ],
            };

            /// The value for a number read off the wire, if it names one.
            pub const fn from_wire(v: $repr) -> Option<Self> {
                match v {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// The number written on the wire.
            pub const fn wire(self) -> $repr {
                self as $repr
            }
        }
    };
}

/// First two bytes of every frame: ASCII "TM" (0x54, 0x4D), read as little-endian u16 0x4D54.
pub const MAGIC: u16 = 0x4D54;
/// The format version this crate speaks.
pub const VERSION: u8 = 1;
/// Channels at or above this id are raw channels: any f64 bit pattern is accepted (NaN = "no value").
/// Below it, values must be finite unless the record's `FAULT` quality bit is set.
pub const RAW_CHANNEL_MIN: u16 = 0xF000;
/// Largest record count any frame can declare (the header's `count` is a u16).
pub const MAX_COUNT: usize = u16::MAX as usize;

wire_struct! {
    /// Fixed 32-byte header that starts every frame, in both directions.
    pub struct Header as "tm_header" {
        /// Always 0x4D54 (bytes 0x54 0x4D, ASCII "TM").
        pub magic: u16,
        /// Format version, 1.
        pub version: u8,
        /// Frame type (see Frame types).
        pub frame_type: u8,
        /// Frame flags (see Frame flags); bits not defined for the frame's direction must be 0.
        pub flags: u16,
        /// Number of records in the payload (0 for ack, 1 for error).
        pub count: u16,
        /// Device the frame is from or about; 0 in live frames (each record names its device).
        pub device_id: u64,
        /// Device frames: per-device sequence number, strictly increasing across reconnects and reboots, never 0. Ack: highest acknowledged sequence. Error: sequence of the rejected frame (0 if unknown). Live: stream position of the last record.
        pub seq: u64,
        /// Payload length in bytes (frame length minus 32).
        pub payload_len: u32,
        /// CRC-32C (Castagnoli, reflected, init and xorout 0xFFFFFFFF) of the payload bytes; 0 for an empty payload.
        pub payload_crc: u32,
    }
}

wire_struct! {
    /// Telemetry payload prefix: the base time that record offsets are added to.
    pub struct TelemetryBase as "tm_telemetry_base" {
        /// Base timestamp, microseconds since the Unix epoch (UTC).
        pub base_ts_us: i64,
    }
}

wire_struct! {
    /// One reading of a telemetry batch (16 bytes).
    pub struct Record as "tm_record" {
        /// Channel id (sensor input). 0xE000-0xEFFF are well-known channels; >= 0xF000 are raw channels.
        pub channel: u16,
        /// Quality bits (see Quality flags); undefined bits are ignored.
        pub quality: u16,
        /// Microseconds after the batch's base timestamp.
        pub offset_us: u32,
        /// The value. Must be finite on channels below 0xF000 unless quality has FAULT.
        pub value: f64,
    }
}

wire_struct! {
    /// Fixed multi-field environmental packet (24 bytes); each packet yields four readings on the Env* channels.
    pub struct EnvPacket as "tm_env_packet" {
        /// Sample time, microseconds since the Unix epoch (UTC).
        pub ts_us: i64,
        /// Air temperature, degrees Celsius (channel EnvTemperature).
        pub temperature_c: f32,
        /// Relative humidity, percent (channel EnvHumidity).
        pub humidity_pct: f32,
        /// Barometric pressure, hectopascal (channel EnvPressure).
        pub pressure_hpa: f32,
        /// Battery voltage, millivolts (channel EnvBattery).
        pub battery_mv: u16,
        /// Quality bits applied to all four readings (see Quality flags).
        pub quality: u16,
    }
}

wire_struct! {
    /// Error payload, server to device: why a frame was refused.
    pub struct ErrorBody as "tm_error_body" {
        /// Reason code (see Reason codes).
        pub reason: u16,
        /// Frame type of the refused frame (0 if it could not be read).
        pub rejected_type: u8,
        /// Reserved, 0.
        pub reserved: u8,
        /// What the server expected (meaning depends on the reason; 0 if none).
        pub expected: u64,
        /// What the server found (meaning depends on the reason; 0 if none).
        pub found: u64,
    }
}

wire_struct! {
    /// One reading of a live batch, server to dashboard (28 bytes).
    pub struct LiveRecord as "tm_live_record" {
        /// Device the reading came from.
        pub device_id: u64,
        /// Reading time, microseconds since the Unix epoch (UTC).
        pub ts_us: i64,
        /// The value.
        pub value: f64,
        /// Channel id.
        pub channel: u16,
        /// Quality bits.
        pub quality: u16,
    }
}

wire_enum! {
    /// Frame types. Device to server: 0x01-0x3F; server to device: 0x80-0xBF; server to dashboard: 0xC0-0xFF.
    pub enum FrameType: u8, prefix "TM_FRAME_", flags false {
        /// Device to server. Payload: TelemetryBase, then `count` Records (1..=limit).
        Telemetry = 0x01,
        /// Device to server. Payload: `count` EnvPackets (1..=limit).
        Environment = 0x02,
        /// Server to device. No payload; `seq` is the cumulative acknowledged sequence.
        Ack = 0x81,
        /// Server to device. Payload: one ErrorBody; `seq` is the refused frame's sequence.
        Error = 0x82,
        /// Server to dashboard. Payload: `count` LiveRecords; `seq` is the stream position of the last one.
        Live = 0xC1,
    }
}

wire_enum! {
    /// Frame flags (header `flags`).
    pub enum FrameFlag: u16, prefix "TM_FLAG_", flags true {
        /// Device to server: this frame was sent before and is being re-sent (after a reconnect or reboot).
        Resent = 0x0001,
        /// Server to dashboard: some readings were coalesced away (a slow client got the newest values only).
        Coalesced = 0x0002,
    }
}

wire_enum! {
    /// Quality bits of a reading (record `quality`).
    pub enum Quality: u16, prefix "TM_QUALITY_", flags true {
        /// The sensor reported a fault; the value is not meaningful and may be NaN or infinite.
        Fault = 0x0001,
        /// The value was estimated or interpolated, not measured.
        Estimated = 0x0002,
        /// The value hit the sensor's range limit and was clamped.
        Clamped = 0x0004,
        /// The sensor was calibrating.
        Calibrating = 0x0008,
    }
}

wire_enum! {
    /// Well-known channel ids (the EnvPacket fields map to these).
    pub enum Channel: u16, prefix "TM_CHANNEL_", flags false {
        /// EnvPacket temperature_c.
        EnvTemperature = 0xE000,
        /// EnvPacket humidity_pct.
        EnvHumidity = 0xE001,
        /// EnvPacket pressure_hpa.
        EnvPressure = 0xE002,
        /// EnvPacket battery_mv.
        EnvBattery = 0xE003,
    }
}

wire_enum! {
    /// Reason codes: why a frame was refused, carried in error frames and metrics. Stable forever.
    pub enum Reason: u16, prefix "TM_REASON_", flags false {
        /// Fewer bytes than a header (expected: 32, found: bytes received).
        Truncated = 1,
        /// Magic is not 0x4D54 (expected: 0x4D54, found: magic).
        BadMagic = 2,
        /// Version is not supported (expected: 1, found: version).
        UnsupportedVersion = 3,
        /// Frame type is not defined (found: type).
        UnknownFrameType = 4,
        /// Frame type is defined but not accepted in this direction (found: type).
        UnexpectedFrameType = 5,
        /// Flag bits set that are not defined for this frame (expected: allowed mask, found: flags).
        ReservedFlags = 6,
        /// Bytes received differ from 32 + payload_len (expected: 32 + payload_len, found: bytes received).
        LengthMismatch = 7,
        /// A batch with count 0 (found: 0).
        EmptyBatch = 8,
        /// More records than the receiver's limit (expected: limit, found: count).
        TooManyRecords = 9,
        /// payload_len does not fit count records (expected: length for count, found: payload_len).
        CountMismatch = 10,
        /// Payload CRC-32C differs (expected: header payload_crc, found: computed).
        CrcMismatch = 11,
        /// A NaN or infinite value where a finite one is required (expected: record index, found: channel).
        NonFiniteValue = 12,
        /// A reading time outside the accepted window (expected: record index, found: timestamp in us as i64 bits).
        TimestampOutOfRange = 13,
        /// Sequence number 0 (sequences start at 1).
        ZeroSequence = 14,
        /// Frame device_id differs from the authenticated device (expected: token device, found: frame device).
        DeviceMismatch = 32,
        /// Sequence is older than the dedup window, so the server cannot tell if it was stored (expected: lowest accepted, found: seq).
        SequenceTooOld = 33,
        /// The device exceeded its frame or reading rate; the connection is closed with 4029 (expected: allowed per second, found: readings in the refused frame).
        RateLimited = 34,
    }
}

impl Reason {
    /// Short snake_case name used in metrics labels, JSON and logs (`crc_mismatch`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Truncated => "truncated",
            Reason::BadMagic => "bad_magic",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::UnknownFrameType => "unknown_frame_type",
            Reason::UnexpectedFrameType => "unexpected_frame_type",
            Reason::ReservedFlags => "reserved_flags",
            Reason::LengthMismatch => "length_mismatch",
            Reason::EmptyBatch => "empty_batch",
            Reason::TooManyRecords => "too_many_records",
            Reason::CountMismatch => "count_mismatch",
            Reason::CrcMismatch => "crc_mismatch",
            Reason::NonFiniteValue => "non_finite_value",
            Reason::TimestampOutOfRange => "timestamp_out_of_range",
            Reason::ZeroSequence => "zero_sequence",
            Reason::DeviceMismatch => "device_mismatch",
            Reason::SequenceTooOld => "sequence_too_old",
            Reason::RateLimited => "rate_limited",
        }
    }
}

impl FrameType {
    /// Who may send this frame type.
    pub const fn direction(self) -> Direction {
        match self {
            FrameType::Telemetry | FrameType::Environment => Direction::DeviceToServer,
            FrameType::Ack | FrameType::Error => Direction::ServerToDevice,
            FrameType::Live => Direction::ServerToDashboard,
        }
    }

    /// Flag bits defined for this frame type.
    pub const fn allowed_flags(self) -> u16 {
        match self {
            FrameType::Telemetry | FrameType::Environment => FrameFlag::Resent as u16,
            FrameType::Live => FrameFlag::Coalesced as u16,
            FrameType::Ack | FrameType::Error => 0,
        }
    }
}

/// Who sends a frame to whom; a decoder accepts only the frame types of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Device firmware to the ingest server (telemetry, environment).
    DeviceToServer,
    /// Ingest server to a device (ack, error).
    ServerToDevice,
    /// Server to a dashboard client (live).
    ServerToDashboard,
}

/// Every wire struct, in the order WIRE.md and the generated files list them.
pub const STRUCTS: &[StructLayout] = &[
    Header::LAYOUT,
    TelemetryBase::LAYOUT,
    Record::LAYOUT,
    EnvPacket::LAYOUT,
    ErrorBody::LAYOUT,
    LiveRecord::LAYOUT,
];

/// Every wire enum and flag set, in the order WIRE.md and the generated files list them.
pub const ENUMS: &[EnumLayout] = &[
    FrameType::LAYOUT,
    FrameFlag::LAYOUT,
    Quality::LAYOUT,
    Channel::LAYOUT,
    Reason::LAYOUT,
];

const _: () = assert!(Header::SIZE == 32);
const _: () = assert!(Record::SIZE == 16);
const _: () = assert!(EnvPacket::SIZE == 24);
const _: () = assert!(LiveRecord::SIZE == 28);
const _: () = assert!(ErrorBody::SIZE == 20);
