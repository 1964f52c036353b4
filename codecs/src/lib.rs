//! telemux wire format v1: the bytes devices, the server and dashboards exchange.
//!
//! # Layout
//! - [`layout`]: the single declaration of every wire struct, enum and constant (the source of
//!   the C header, the JS layout and the byte tables in `WIRE.md`).
//! - [`decode`]: check-then-view decoding; zero-copy, no allocation, any alignment.
//! - [`encode`]: encoders that append to a caller-owned buffer.
//! - [`codegen`]: writes the C header, the JS layout module and the WIRE.md tables from [`layout`].
//! - [`golden`]: the golden vectors (valid and invalid frames with their expected decoding)
//!   checked by the Rust, C and JS tests.
//!
//! `WIRE.md` is the specification; `cargo run -p codecs --bin wire-gen` regenerates every
//! derived file.

pub mod codegen;
pub mod decode;
pub mod encode;
pub mod golden;
pub mod layout;

pub use decode::{DecodeError, Frame, Limits, Reading, Readings, decode};
pub use encode::{
    EncodeError, FrameMeta, TelemetryWriter, encode_ack, encode_environment, encode_error,
    encode_live, encode_telemetry,
};
pub use layout::{
    Channel, Direction, EnvPacket, ErrorBody, FrameFlag, FrameType, Header, LiveRecord, MAGIC,
    Quality, RAW_CHANNEL_MIN, Reason, Record, TelemetryBase, VERSION,
};
