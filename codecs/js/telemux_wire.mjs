// telemux wire format v1: checked decoding for browsers and Node (ES module, no build step, no
// dependencies).
//
// Every offset and size is read from the generated `./layout.mjs` (written by
// `cargo run -p codecs --bin wire-gen` from codecs/src/layout.rs); the check rules and their
// order mirror codecs/src/decode.rs::decode exactly, and the golden vectors in codecs/golden/
// (plus a differential corpus from the Rust decoder, see codecs/tests/js.rs) keep them in step.

import {
  MAGIC,
  VERSION,
  RAW_CHANNEL_MIN,
  FrameType,
  FrameFlag,
  Quality,
  Channel,
  Reason,
  ReasonName,
  Structs,
} from './layout.mjs';

export {
  MAGIC,
  VERSION,
  RAW_CHANNEL_MIN,
  FrameType,
  FrameFlag,
  Quality,
  Channel,
  Reason,
  ReasonName,
  Structs,
} from './layout.mjs';

// ---------------------------------------------------------------------------------------------
// Layout, read from the generated tables (and checked once, at import).

const READERS = {
  u8: (dv, at) => dv.getUint8(at),
  u16: (dv, at) => dv.getUint16(at, true),
  u32: (dv, at) => dv.getUint32(at, true),
  u64: (dv, at) => dv.getBigUint64(at, true),
  i64: (dv, at) => dv.getBigInt64(at, true),
  f32: (dv, at) => dv.getFloat32(at, true),
  f64: (dv, at) => dv.getFloat64(at, true),
};

/**
 * The layout of one generated struct, with the fields this decoder relies on checked by type.
 * @param {string} name struct name in `Structs`
 * @param {Record<string, string>} required field name -> wire type this module reads it as
 */
function structLayout(name, required) {
  const s = Structs[name];
  if (!s) throw new Error(`telemux_wire: layout.mjs has no struct ${name}`);
  /** @type {Record<string, number>} */
  const off = Object.create(null);
  const fields = s.fields.map((f) => {
    const read = READERS[f.type];
    if (!read) throw new Error(`telemux_wire: ${name}.${f.name} has unknown wire type ${f.type}`);
    off[f.name] = f.offset;
    return { name: f.name, offset: f.offset, read };
  });
  for (const [field, type] of Object.entries(required)) {
    const f = s.fields.find((x) => x.name === field);
    if (!f || f.type !== type) {
      throw new Error(`telemux_wire: layout.mjs ${name}.${field} must be a ${type} field`);
    }
  }
  return Object.freeze({ size: s.size, off, fields });
}

const HEADER = structLayout('Header', {
  magic: 'u16',
  version: 'u8',
  frame_type: 'u8',
  flags: 'u16',
  count: 'u16',
  device_id: 'u64',
  seq: 'u64',
  payload_len: 'u32',
  payload_crc: 'u32',
});
const TELEMETRY_BASE = structLayout('TelemetryBase', { base_ts_us: 'i64' });
const RECORD = structLayout('Record', {
  channel: 'u16',
  quality: 'u16',
  offset_us: 'u32',
  value: 'f64',
});
const ENV_PACKET = structLayout('EnvPacket', {
  ts_us: 'i64',
  temperature_c: 'f32',
  humidity_pct: 'f32',
  pressure_hpa: 'f32',
  battery_mv: 'u16',
  quality: 'u16',
});
const ERROR_BODY = structLayout('ErrorBody', { reason: 'u16' });
const LIVE_RECORD = structLayout('LiveRecord', {
  device_id: 'u64',
  ts_us: 'i64',
  value: 'f64',
  channel: 'u16',
  quality: 'u16',
});

const H = HEADER.off;
const R = RECORD.off;
const E = ENV_PACKET.off;
const L = LIVE_RECORD.off;
const HEADER_SIZE = HEADER.size;

/** Reads every field of a struct at `at` into a plain object keyed by the generated field names. */
function readStruct(dv, at, layout) {
  /** @type {Record<string, number | bigint>} */
  const o = {};
  for (const f of layout.fields) o[f.name] = f.read(dv, at + f.offset);
  return o;
}

/**
 * Frame directions: a decoder accepts only the frame types of one direction.
 * @type {Readonly<{DEVICE_TO_SERVER: 'device_to_server', SERVER_TO_DEVICE: 'server_to_device', SERVER_TO_DASHBOARD: 'server_to_dashboard'}>}
 */
export const Direction = Object.freeze({
  DEVICE_TO_SERVER: 'device_to_server',
  SERVER_TO_DEVICE: 'server_to_device',
  SERVER_TO_DASHBOARD: 'server_to_dashboard',
});
const DIRECTIONS = new Set(Object.values(Direction));

// FrameType::direction() / allowed_flags() and the payload shape of each type (decode.rs).
const FRAME_KINDS = new Map([
  [FrameType.TELEMETRY, { type: 'telemetry', direction: Direction.DEVICE_TO_SERVER, allowedFlags: FrameFlag.RESENT, prefix: TELEMETRY_BASE.size, record: RECORD.size }],
  [FrameType.ENVIRONMENT, { type: 'environment', direction: Direction.DEVICE_TO_SERVER, allowedFlags: FrameFlag.RESENT, prefix: 0, record: ENV_PACKET.size }],
  [FrameType.ACK, { type: 'ack', direction: Direction.SERVER_TO_DEVICE, allowedFlags: 0, prefix: 0, record: 0 }],
  [FrameType.ERROR, { type: 'error', direction: Direction.SERVER_TO_DEVICE, allowedFlags: 0, prefix: 0, record: ERROR_BODY.size }],
  [FrameType.LIVE, { type: 'live', direction: Direction.SERVER_TO_DASHBOARD, allowedFlags: FrameFlag.COALESCED, prefix: 0, record: LIVE_RECORD.size }],
]);
const TYPE_NAMES = {
  device_to_server: 'DeviceToServer',
  server_to_device: 'ServerToDevice',
  server_to_dashboard: 'ServerToDashboard',
};

// ---------------------------------------------------------------------------------------------
// Options.

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;

/** Saturates a BigInt to the i64 range (Rust's saturating_add / saturating_sub). */
function sat(x) {
  return x > I64_MAX ? I64_MAX : x < I64_MIN ? I64_MIN : x;
}

/**
 * Default receiver limits, as in decode.rs (`Limits::default()`).
 * @type {Readonly<{maxRecords: number, maxPastUs: bigint, maxFutureUs: bigint}>}
 */
export const DEFAULT_LIMITS = Object.freeze({
  maxRecords: 4096,
  maxPastUs: 30n * 24n * 3600n * 1000000n,
  maxFutureUs: 5n * 60n * 1000000n,
});

function toI64(v, what) {
  let b;
  if (typeof v === 'bigint') b = v;
  else if (typeof v === 'number' && Number.isSafeInteger(v)) b = BigInt(v);
  else if (typeof v === 'string' && /^-?[0-9]+$/.test(v)) b = BigInt(v);
  else throw new TypeError(`telemux_wire: ${what} must be an integer (BigInt, safe Number or decimal string), got ${String(v)}`);
  if (b < I64_MIN || b > I64_MAX) throw new TypeError(`telemux_wire: ${what} ${b} is outside the i64 range`);
  return b;
}

function pick(obj, camel, snake) {
  return obj[camel] !== undefined ? obj[camel] : obj[snake];
}

function parseLimits(limits) {
  if (limits == null) return DEFAULT_LIMITS;
  if (typeof limits !== 'object') throw new TypeError('telemux_wire: limits must be an object');
  const mr = pick(limits, 'maxRecords', 'max_records');
  const mp = pick(limits, 'maxPastUs', 'max_past_us');
  const mf = pick(limits, 'maxFutureUs', 'max_future_us');
  let maxRecords = DEFAULT_LIMITS.maxRecords;
  if (mr !== undefined) {
    const n = typeof mr === 'string' && /^[0-9]+$/.test(mr) ? Number(mr) : typeof mr === 'bigint' ? Number(mr) : mr;
    if (!Number.isInteger(n) || n < 0 || n > 0xffff) {
      throw new TypeError(`telemux_wire: limits.maxRecords must be an integer in 0..=65535, got ${String(mr)}`);
    }
    maxRecords = n;
  }
  return {
    maxRecords,
    maxPastUs: mp === undefined ? DEFAULT_LIMITS.maxPastUs : toI64(mp, 'limits.maxPastUs'),
    maxFutureUs: mf === undefined ? DEFAULT_LIMITS.maxFutureUs : toI64(mf, 'limits.maxFutureUs'),
  };
}

function toDataView(src) {
  if (src instanceof DataView) return src;
  if (ArrayBuffer.isView(src)) return new DataView(src.buffer, src.byteOffset, src.byteLength);
  const tag = Object.prototype.toString.call(src);
  if (tag === '[object ArrayBuffer]' || tag === '[object SharedArrayBuffer]') {
    return new DataView(/** @type {ArrayBuffer} */ (src));
  }
  throw new TypeError('telemux_wire: expected an ArrayBuffer, a typed array, a DataView or a Buffer');
}

// ---------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and xorout 0xFFFFFFFF).

/** @type {Int32Array | null} */
let crcTable = null;

function buildCrcTable() {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c;
  }
  return t;
}

function crcOf(bytes, start, end) {
  const t = crcTable || (crcTable = buildCrcTable());
  let c = -1;
  for (let i = start; i < end; i++) c = t[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * CRC-32C (Castagnoli) of some bytes, as the header's `payload_crc` carries it (0 for no bytes).
 * The 256-entry table is built on first use.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @returns {number} unsigned 32-bit CRC
 */
export function crc32c(data) {
  const dv = toDataView(data);
  const bytes = new Uint8Array(dv.buffer, dv.byteOffset, dv.byteLength);
  return crcOf(bytes, 0, bytes.length);
}

// ---------------------------------------------------------------------------------------------
// Checks (decode.rs::decode, check_header, check_records, check_packets), in the same order.

function hex(n, width) {
  return '0x' + n.toString(16).padStart(width, '0');
}

function fail(code, expected, found, message) {
  return {
    ok: false,
    reason: ReasonName[code],
    reasonCode: code,
    message,
    expected: BigInt(expected),
    found: BigInt(found),
  };
}

/**
 * Runs every frame-level check (header through CRC). Returns the frame kind on success, else a
 * failure result. Never throws on any bytes.
 */
function checkFrame(dv, direction, limits) {
  const len = dv.byteLength;
  if (len < HEADER_SIZE) {
    return fail(Reason.TRUNCATED, HEADER_SIZE, len, `truncated frame: expected at least ${HEADER_SIZE} bytes, found ${len}`);
  }
  const magic = dv.getUint16(H.magic, true);
  if (magic !== MAGIC) {
    return fail(Reason.BAD_MAGIC, MAGIC, magic, `bad magic: expected ${hex(MAGIC, 4)}, found ${hex(magic, 4)}`);
  }
  const version = dv.getUint8(H.version);
  if (version !== VERSION) {
    return fail(Reason.UNSUPPORTED_VERSION, VERSION, version, `unsupported version: expected ${VERSION}, found ${version}`);
  }
  const typeCode = dv.getUint8(H.frame_type);
  const kind = FRAME_KINDS.get(typeCode);
  if (kind === undefined) {
    return fail(Reason.UNKNOWN_FRAME_TYPE, 0, typeCode, `unknown frame type ${hex(typeCode, 2)}`);
  }
  if (kind.direction !== direction) {
    return fail(Reason.UNEXPECTED_FRAME_TYPE, 0, typeCode,
      `frame type ${kind.type} (${hex(typeCode, 2)}) is not accepted here (expected a ${TYPE_NAMES[direction]} frame)`);
  }
  const flags = dv.getUint16(H.flags, true);
  if ((flags & ~kind.allowedFlags) !== 0) {
    return fail(Reason.RESERVED_FLAGS, kind.allowedFlags, flags,
      `reserved flag bits set: allowed mask ${hex(kind.allowedFlags, 4)}, found ${hex(flags, 4)}`);
  }
  const payloadLen = dv.getUint32(H.payload_len, true);
  if (HEADER_SIZE + payloadLen !== len) {
    return fail(Reason.LENGTH_MISMATCH, HEADER_SIZE + payloadLen, len,
      `length mismatch: header says ${HEADER_SIZE + payloadLen} bytes, received ${len}`);
  }
  const count = dv.getUint16(H.count, true);
  if (direction === Direction.DEVICE_TO_SERVER) {
    if (dv.getUint32(H.seq, true) === 0 && dv.getUint32(H.seq + 4, true) === 0) {
      return fail(Reason.ZERO_SEQUENCE, 1, 0, 'sequence number 0: sequences start at 1');
    }
    if (count === 0) {
      return fail(Reason.EMPTY_BATCH, 0, 0, 'empty batch: expected at least 1 record, found 0');
    }
    if (count > limits.maxRecords) {
      return fail(Reason.TOO_MANY_RECORDS, limits.maxRecords, count, `too many records: limit ${limits.maxRecords}, found ${count}`);
    }
  }
  const expectedLen = kind.prefix + count * kind.record;
  const countMismatch = () => fail(Reason.COUNT_MISMATCH, expectedLen, payloadLen,
    `count mismatch: ${count} records need a ${expectedLen}-byte payload, found ${payloadLen}`);
  if (payloadLen !== expectedLen) return countMismatch();
  const headerCrc = dv.getUint32(H.payload_crc, true);
  const crc = crcOf(new Uint8Array(dv.buffer, dv.byteOffset + HEADER_SIZE, payloadLen), 0, payloadLen);
  if (crc !== headerCrc) {
    return fail(Reason.CRC_MISMATCH, headerCrc, crc,
      `payload CRC-32C mismatch: header says ${hex(headerCrc, 8)}, computed ${hex(crc, 8)}`);
  }
  // decode.rs views an error payload as exactly one ErrorBody; any other length (count 0 or > 1,
  // which passed the count check above) is refused as a count mismatch there too.
  if (kind.type === 'error' && payloadLen !== ERROR_BODY.size) return countMismatch();
  return kind;
}

function window(limits, nowUs) {
  return [sat(nowUs - limits.maxPastUs), sat(nowUs + limits.maxFutureUs)];
}

function nonFinite(index, channel) {
  return fail(Reason.NON_FINITE_VALUE, index, channel,
    `record ${index}: non-finite value on channel ${hex(channel, 4)} without the FAULT quality bit`);
}

function outOfRange(index, tsUs, minUs, maxUs) {
  return fail(Reason.TIMESTAMP_OUT_OF_RANGE, index, BigInt.asUintN(64, tsUs),
    `record ${index}: timestamp ${tsUs} us is outside the accepted window [${minUs}, ${maxUs}]`);
}

/** check_records: every value first (first offender wins), then every timestamp. */
function checkRecords(dv, count, limits, nowUs) {
  const base = dv.getBigInt64(HEADER_SIZE, true);
  const first = HEADER_SIZE + TELEMETRY_BASE.size;
  let maxOffset = 0;
  for (let i = 0, at = first; i < count; i++, at += RECORD.size) {
    const offset = dv.getUint32(at + R.offset_us, true);
    if (offset > maxOffset) maxOffset = offset;
    if (!Number.isFinite(dv.getFloat64(at + R.value, true))) {
      const channel = dv.getUint16(at + R.channel, true);
      if (channel < RAW_CHANNEL_MIN && (dv.getUint16(at + R.quality, true) & Quality.FAULT) === 0) {
        return nonFinite(i, channel);
      }
    }
  }
  const [minUs, maxUs] = window(limits, nowUs);
  if (base < minUs || sat(base + BigInt(maxOffset)) > maxUs) {
    for (let i = 0, at = first; i < count; i++, at += RECORD.size) {
      const ts = sat(base + BigInt(dv.getUint32(at + R.offset_us, true)));
      if (ts < minUs || ts > maxUs) return outOfRange(i, ts, minUs, maxUs);
    }
  }
  return null;
}

/** check_packets: per packet, values then timestamp. */
function checkPackets(dv, count, limits, nowUs) {
  const [minUs, maxUs] = window(limits, nowUs);
  for (let i = 0, at = HEADER_SIZE; i < count; i++, at += ENV_PACKET.size) {
    const tOk = Number.isFinite(dv.getFloat32(at + E.temperature_c, true));
    const hOk = Number.isFinite(dv.getFloat32(at + E.humidity_pct, true));
    const pOk = Number.isFinite(dv.getFloat32(at + E.pressure_hpa, true));
    if (!(tOk && hOk && pOk) && (dv.getUint16(at + E.quality, true) & Quality.FAULT) === 0) {
      return nonFinite(i, !tOk ? Channel.ENV_TEMPERATURE : !hOk ? Channel.ENV_HUMIDITY : Channel.ENV_PRESSURE);
    }
    const ts = dv.getBigInt64(at + E.ts_us, true);
    if (ts < minUs || ts > maxUs) return outOfRange(i, ts, minUs, maxUs);
  }
  return null;
}

function readArray(dv, first, count, layout) {
  const out = new Array(count);
  for (let i = 0; i < count; i++) out[i] = readStruct(dv, first + i * layout.size, layout);
  return out;
}

/**
 * Checks one frame exactly as `codecs/src/decode.rs::decode` does (same rules, same order:
 * truncated, bad_magic, unsupported_version, unknown_frame_type, unexpected_frame_type,
 * reserved_flags, length_mismatch; for device frames zero_sequence, empty_batch,
 * too_many_records; then count_mismatch, crc_mismatch; then per record non_finite_value and
 * timestamp_out_of_range) and decodes it. Never throws on any bytes; throws a `TypeError` only
 * when called wrongly (not a byte source, unknown direction, malformed limits or nowUs).
 *
 * Field names are the generated snake_case names; u64/i64 fields are BigInt, floats Numbers.
 * Frames: `{type: 'telemetry', base_ts_us, records: [{channel, quality, offset_us, value}]}`,
 * `{type: 'environment', packets: [{ts_us, temperature_c, humidity_pct, pressure_hpa, battery_mv, quality}]}`,
 * `{type: 'ack', acked_seq}`,
 * `{type: 'error', refused_seq, reason, reason_name, rejected_type, reserved, expected, found}`,
 * `{type: 'live', position, coalesced, records: [{device_id, ts_us, value, channel, quality}]}`.
 *
 * @param {ArrayBuffer | ArrayBufferView} bufferOrView the whole frame (any alignment, any offset)
 * @param {{direction: 'device_to_server' | 'server_to_device' | 'server_to_dashboard',
 *          limits?: {maxRecords?: number, maxPastUs?: bigint | number | string, maxFutureUs?: bigint | number | string,
 *                    max_records?: number, max_past_us?: bigint | number | string, max_future_us?: bigint | number | string},
 *          nowUs?: bigint | number | string}} options
 *   `limits` default to {@link DEFAULT_LIMITS} (snake_case keys as in vectors.json are accepted);
 *   `nowUs` (microseconds since the Unix epoch) defaults to `Date.now() * 1000`.
 * @returns {{ok: true, header: Record<string, number | bigint>, frame: Record<string, any>}
 *         | {ok: false, reason: string, reasonCode: number, message: string, expected: bigint, found: bigint}}
 *   on failure, `reason` is the snake_case reason name, `reasonCode` the wire code, and
 *   `expected`/`found` the pair an error frame carries (DecodeError::expected_found).
 */
export function decodeFrame(bufferOrView, options) {
  const dv = toDataView(bufferOrView);
  const opts = options || {};
  const direction = opts.direction;
  if (!DIRECTIONS.has(direction)) {
    throw new TypeError(`telemux_wire: direction must be one of ${[...DIRECTIONS].join(', ')}, got ${String(direction)}`);
  }
  const limits = parseLimits(opts.limits);
  const nowUs = opts.nowUs === undefined ? BigInt(Date.now()) * 1000n : toI64(opts.nowUs, 'nowUs');

  const kind = checkFrame(dv, direction, limits);
  if (kind.ok === false) return kind;
  const count = dv.getUint16(H.count, true);
  if (kind.type === 'telemetry') {
    const bad = checkRecords(dv, count, limits, nowUs);
    if (bad) return bad;
  } else if (kind.type === 'environment') {
    const bad = checkPackets(dv, count, limits, nowUs);
    if (bad) return bad;
  }

  const header = readStruct(dv, 0, HEADER);
  let frame;
  switch (kind.type) {
    case 'telemetry':
      frame = {
        type: 'telemetry',
        base_ts_us: dv.getBigInt64(HEADER_SIZE + TELEMETRY_BASE.off.base_ts_us, true),
        records: readArray(dv, HEADER_SIZE + TELEMETRY_BASE.size, count, RECORD),
      };
      break;
    case 'environment':
      frame = { type: 'environment', packets: readArray(dv, HEADER_SIZE, count, ENV_PACKET) };
      break;
    case 'ack':
      frame = { type: 'ack', acked_seq: header.seq };
      break;
    case 'error': {
      const body = readStruct(dv, HEADER_SIZE, ERROR_BODY);
      const reason = /** @type {number} */ (body.reason);
      frame = { type: 'error', refused_seq: header.seq, ...body, reason_name: ReasonName[reason] ?? null };
      break;
    }
    default:
      frame = {
        type: 'live',
        position: header.seq,
        coalesced: (dv.getUint16(H.flags, true) & FrameFlag.COALESCED) !== 0,
        records: readArray(dv, HEADER_SIZE, count, LIVE_RECORD),
      };
  }
  return { ok: true, header, frame };
}

/**
 * Expands the readings of a decoded device frame to one shape (Frame::readings in Rust):
 * telemetry records get `tsUs = base_ts_us + offset_us` (saturating at the i64 range);
 * each environment packet gives four readings on `Channel.ENV_TEMPERATURE`..`Channel.ENV_BATTERY`
 * (f32 values widened to Numbers, battery_mv as a Number). Other frames have no readings.
 * @param {Record<string, any>} frame the `frame` of a successful {@link decodeFrame} result
 * @returns {{channel: number, quality: number, tsUs: bigint, value: number}[]}
 */
export function readingsOf(frame) {
  if (frame === null || typeof frame !== 'object') {
    throw new TypeError('telemux_wire: readingsOf expects the frame of a successful decodeFrame result');
  }
  if (frame.type === 'telemetry') {
    const base = frame.base_ts_us;
    return frame.records.map((r) => ({
      channel: r.channel,
      quality: r.quality,
      tsUs: sat(base + BigInt(r.offset_us)),
      value: r.value,
    }));
  }
  if (frame.type === 'environment') {
    const out = [];
    for (const p of frame.packets) {
      out.push(
        { channel: Channel.ENV_TEMPERATURE, quality: p.quality, tsUs: p.ts_us, value: p.temperature_c },
        { channel: Channel.ENV_HUMIDITY, quality: p.quality, tsUs: p.ts_us, value: p.humidity_pct },
        { channel: Channel.ENV_PRESSURE, quality: p.quality, tsUs: p.ts_us, value: p.pressure_hpa },
        { channel: Channel.ENV_BATTERY, quality: p.quality, tsUs: p.ts_us, value: p.battery_mv },
      );
    }
    return out;
  }
  return [];
}

// ---------------------------------------------------------------------------------------------
// Dashboard fast path.

/**
 * Error thrown by {@link decodeLive} and {@link forEachLiveRecord} for a frame that fails a check.
 * Carries the same `reason`, `reasonCode`, `expected` and `found` as a failed {@link decodeFrame}.
 */
export class WireError extends Error {
  /** @param {{reason: string, reasonCode: number, message: string, expected: bigint, found: bigint}} failure */
  constructor(failure) {
    super(`telemux live frame refused (${failure.reason}): ${failure.message}`);
    this.name = 'WireError';
    /** snake_case reason name, e.g. 'crc_mismatch' */
    this.reason = failure.reason;
    /** wire reason code, e.g. Reason.CRC_MISMATCH */
    this.reasonCode = failure.reasonCode;
    /** @type {bigint} */
    this.expected = failure.expected;
    /** @type {bigint} */
    this.found = failure.found;
  }
}

function checkLive(buffer) {
  const dv = toDataView(buffer);
  const kind = checkFrame(dv, Direction.SERVER_TO_DASHBOARD, DEFAULT_LIMITS);
  if (kind.ok === false) throw new WireError(kind);
  return dv;
}

/** u64 at `at` as the nearest Number (exact below 2^53). */
function u64Number(dv, at) {
  return dv.getUint32(at + 4, true) * 4294967296 + dv.getUint32(at, true);
}

/** i64 at `at` as the nearest Number (exact within +-2^53). */
function i64Number(dv, at) {
  return dv.getInt32(at + 4, true) * 4294967296 + dv.getUint32(at, true);
}

/**
 * Decodes a server_to_dashboard live frame after the same checks {@link decodeFrame} applies
 * (header, length, count and CRC-32C), without building a header object.
 * @param {ArrayBuffer | ArrayBufferView} buffer the whole frame
 * @returns {{position: bigint, coalesced: boolean, count: number,
 *            records: {deviceId: bigint, channel: number, quality: number, tsUs: bigint, value: number}[]}}
 *   `position` is the stream position of the last record (header `seq`).
 * @throws {WireError} if the frame fails a check (e.g. not a live frame, bad CRC)
 * @throws {TypeError} if `buffer` is not an ArrayBuffer, typed array, DataView or Buffer
 */
export function decodeLive(buffer) {
  const dv = checkLive(buffer);
  const count = dv.getUint16(H.count, true);
  const records = new Array(count);
  for (let i = 0, at = HEADER_SIZE; i < count; i++, at += LIVE_RECORD.size) {
    records[i] = {
      deviceId: dv.getBigUint64(at + L.device_id, true),
      channel: dv.getUint16(at + L.channel, true),
      quality: dv.getUint16(at + L.quality, true),
      tsUs: dv.getBigInt64(at + L.ts_us, true),
      value: dv.getFloat64(at + L.value, true),
    };
  }
  return {
    position: dv.getBigUint64(H.seq, true),
    coalesced: (dv.getUint16(H.flags, true) & FrameFlag.COALESCED) !== 0,
    count,
    records,
  };
}

/**
 * Allocation-light variant of {@link decodeLive} for hot paths: checks the whole frame first
 * (so `fn` never sees a record of a refused frame), then calls
 * `fn(deviceId, channel, quality, tsUs, value)` once per record, in order. `tsUs` is a Number of
 * microseconds (exact up to 2^53, i.e. for any date within +-285 years of 1970); `deviceId` is a
 * BigInt, or with `{deviceIdAsNumber: true}` the nearest Number (exact below 2^53).
 * @param {ArrayBuffer | ArrayBufferView} buffer the whole frame
 * @param {(deviceId: bigint | number, channel: number, quality: number, tsUs: number, value: number) => void} fn
 * @param {{deviceIdAsNumber?: boolean}} [options]
 * @returns {{position: bigint, coalesced: boolean, count: number}} the frame's summary
 * @throws {WireError} if the frame fails a check (before `fn` is called)
 * @throws {TypeError} if `buffer` is not a byte source or `fn` is not a function
 */
export function forEachLiveRecord(buffer, fn, options) {
  if (typeof fn !== 'function') throw new TypeError('telemux_wire: forEachLiveRecord needs a callback');
  const dv = checkLive(buffer);
  const asNumber = !!(options && options.deviceIdAsNumber);
  const count = dv.getUint16(H.count, true);
  const size = LIVE_RECORD.size;
  const dOff = L.device_id, cOff = L.channel, qOff = L.quality, tOff = L.ts_us, vOff = L.value;
  for (let i = 0, at = HEADER_SIZE; i < count; i++, at += size) {
    fn(
      asNumber ? u64Number(dv, at + dOff) : dv.getBigUint64(at + dOff, true),
      dv.getUint16(at + cOff, true),
      dv.getUint16(at + qOff, true),
      i64Number(dv, at + tOff),
      dv.getFloat64(at + vOff, true),
    );
  }
  return {
    position: dv.getBigUint64(H.seq, true),
    coalesced: (dv.getUint16(H.flags, true) & FrameFlag.COALESCED) !== 0,
    count,
  };
}
