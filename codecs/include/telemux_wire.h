/*
 * telemux wire format v1 for device firmware: encoders, a frame checker and field accessors.
 *
 * Hand-written; the layout (offsets, sizes, enum values) comes from the generated
 * telemux_wire_layout.h, so this file never restates a number the generator owns.
 *
 * - C99/C11, header-only (every function is `static inline`), no malloc, no stdio.
 * - Endian-independent: every field is read and written byte by byte, little-endian, at the
 *   generated `*_OFF_*` offsets; the packed structs of the layout header are never cast onto
 *   buffers, so buffers need no alignment. Floats are moved as their IEEE 754 bit patterns
 *   (memcpy to a same-sized integer), which assumes floats share the integers' byte order
 *   (true on every current target).
 * - tm_check_frame() applies the same rules, in the same order, as the Rust
 *   `codecs::decode`, and reports the same reason code and (expected, found) pair; the Rust
 *   test codecs/tests/c_header.rs proves this on the golden vectors and on random frames.
 *
 * Result conventions: encoders and accessors return TM_OK (0) or a negative TM_ERR_* code;
 * tm_check_frame() returns 0 or a positive TM_REASON_* code (the code an error frame carries).
 */
#ifndef TELEMUX_WIRE_H
#define TELEMUX_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "telemux_wire_layout.h"

/* ---- Result codes of encoders and accessors ------------------------------------------------ */

/** Success. */
#define TM_OK 0
/** The output buffer is too small for the frame (or for one more record). */
#define TM_ERR_CAPACITY (-1)
/** More than TM_MAX_COUNT records: the header's count is 16 bits wide. */
#define TM_ERR_TOO_MANY_RECORDS (-2)
/** A required pointer was NULL. */
#define TM_ERR_BAD_ARGUMENT (-3)
/** The accessor does not apply to this frame type (e.g. reading records of an ack). */
#define TM_ERR_WRONG_FRAME_TYPE (-4)
/** Record index at or past the frame's count. */
#define TM_ERR_INDEX (-5)
/** The frame info comes from a check that failed (its reason is not 0). */
#define TM_ERR_NOT_CHECKED (-6)

/* ---- Sizes and limits ---------------------------------------------------------------------- */

/** Largest record count any frame can declare (the header's count is a u16). */
#define TM_MAX_COUNT 65535u
/** Bytes of a telemetry frame carrying `n` records. */
#define TM_TELEMETRY_FRAME_SIZE(n) (TM_HEADER_SIZE + TM_TELEMETRY_BASE_SIZE + (n) * TM_RECORD_SIZE)
/** Bytes of an environment frame carrying `n` packets. */
#define TM_ENVIRONMENT_FRAME_SIZE(n) (TM_HEADER_SIZE + (n) * TM_ENV_PACKET_SIZE)

/** Default largest record count accepted in one frame (Rust DEFAULT_MAX_RECORDS). */
#define TM_DEFAULT_MAX_RECORDS 4096u
/** Default oldest accepted reading: 30 days before now, in us (Rust DEFAULT_MAX_PAST_US). */
#define TM_DEFAULT_MAX_PAST_US (INT64_C(30) * 24 * 3600 * 1000000)
/** Default newest accepted reading: 5 minutes after now, in us (Rust DEFAULT_MAX_FUTURE_US). */
#define TM_DEFAULT_MAX_FUTURE_US (INT64_C(5) * 60 * 1000000)

/** Who sends a frame to whom; a check accepts only the frame types of one direction. */
typedef enum tm_direction {
    /** Device firmware to the ingest server (telemetry, environment). */
    TM_DIRECTION_DEVICE_TO_SERVER = 0,
    /** Ingest server to a device (ack, error): what firmware checks. */
    TM_DIRECTION_SERVER_TO_DEVICE = 1,
    /** Server to a dashboard client (live). */
    TM_DIRECTION_SERVER_TO_DASHBOARD = 2
} tm_direction;

/** Receiver-side limits applied while checking a frame (Rust `codecs::Limits`). */
typedef struct tm_limits {
    /** Largest record count accepted in one device frame. */
    uint16_t max_records;
    /** How far before now_us a reading's timestamp may be, in microseconds. */
    int64_t max_past_us;
    /** How far after now_us a reading's timestamp may be, in microseconds. */
    int64_t max_future_us;
} tm_limits;

/** Result of tm_check_frame(): the header fields, the verdict and a view of the payload. */
typedef struct tm_frame_info {
    /** 0 when the frame passed every check, else the TM_REASON_* code of the first failed rule. */
    uint16_t reason;
    /** What the failed rule expected (as Rust DecodeError::expected_found; 0 when valid). */
    uint64_t expected;
    /** What the failed rule found (as Rust DecodeError::expected_found; 0 when valid). */
    uint64_t found;
    /** Header magic (all header fields are 0 when the frame is shorter than a header). */
    uint16_t magic;
    /** Header version. */
    uint8_t version;
    /** Header frame type (TM_FRAME_*). */
    uint8_t frame_type;
    /** Header flags (TM_FLAG_*). */
    uint16_t flags;
    /** Header record count. */
    uint16_t count;
    /** Header device id. */
    uint64_t device_id;
    /** Header sequence (device frames), acked sequence (ack), refused sequence (error), position (live). */
    uint64_t seq;
    /** Header payload length in bytes. */
    uint32_t payload_len;
    /** Header payload CRC-32C. */
    uint32_t payload_crc;
    /** First payload byte inside the checked buffer; NULL unless reason is 0. */
    const uint8_t *payload;
} tm_frame_info;

/** One telemetry record in native form. */
typedef struct tm_record_fields {
    /** Channel id (>= TM_RAW_CHANNEL_MIN: raw channel, any value accepted). */
    uint16_t channel;
    /** Quality bits (TM_QUALITY_*). */
    uint16_t quality;
    /** Microseconds after the frame's base timestamp. */
    uint32_t offset_us;
    /** The value. */
    double value;
    /** base_ts_us + offset_us (saturating), filled by tm_frame_record(); ignored by encoders. */
    int64_t ts_us;
} tm_record_fields;

/** One environmental packet in native form. */
typedef struct tm_env_fields {
    /** Sample time, microseconds since the Unix epoch (UTC). */
    int64_t ts_us;
    /** Air temperature, degrees Celsius. */
    float temperature_c;
    /** Relative humidity, percent. */
    float humidity_pct;
    /** Barometric pressure, hectopascal. */
    float pressure_hpa;
    /** Battery voltage, millivolts. */
    uint16_t battery_mv;
    /** Quality bits applied to all four readings (TM_QUALITY_*). */
    uint16_t quality;
} tm_env_fields;

/** The body of an error frame (server to device) in native form. */
typedef struct tm_error_fields {
    /** Sequence of the refused frame (header seq; 0 if unknown). */
    uint64_t refused_seq;
    /** Why the frame was refused (TM_REASON_*). */
    uint16_t reason;
    /** Frame type of the refused frame (0 if it could not be read). */
    uint8_t rejected_type;
    /** Reserved byte as received (0 today). */
    uint8_t reserved;
    /** What the server expected (meaning depends on the reason). */
    uint64_t expected;
    /** What the server found (meaning depends on the reason). */
    uint64_t found;
} tm_error_fields;

/** One live record (server to dashboard) in native form. */
typedef struct tm_live_fields {
    /** Device the reading came from. */
    uint64_t device_id;
    /** Reading time, microseconds since the Unix epoch (UTC). */
    int64_t ts_us;
    /** The value. */
    double value;
    /** Channel id. */
    uint16_t channel;
    /** Quality bits. */
    uint16_t quality;
} tm_live_fields;

/**
 * A telemetry frame being built in a caller-owned buffer; returned by tm_telemetry_begin().
 * Treat as opaque: use tm_telemetry_push(), tm_telemetry_room() and tm_telemetry_finish().
 */
typedef struct tm_telemetry_writer {
    /** Output buffer; the frame starts at buf[0]. */
    uint8_t *buf;
    /** Capacity of buf in bytes. */
    size_t cap;
    /** Records written so far. */
    uint16_t count;
    /** TM_OK, or the first error hit (sticky, so tm_telemetry_finish() reports it). */
    int status;
} tm_telemetry_writer;

/* ---- Little-endian field access ------------------------------------------------------------ */

/** Writes `v` little-endian at `p` (2 bytes). */
static inline void tm_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

/** Writes `v` little-endian at `p` (4 bytes). */
static inline void tm_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

/** Writes `v` little-endian at `p` (8 bytes). */
static inline void tm_put_u64(uint8_t *p, uint64_t v)
{
    tm_put_u32(p, (uint32_t)(v & 0xFFFFFFFFu));
    tm_put_u32(p + 4, (uint32_t)(v >> 32));
}

/** Writes `v` as two's complement little-endian at `p` (8 bytes). */
static inline void tm_put_i64(uint8_t *p, int64_t v)
{
    tm_put_u64(p, (uint64_t)v);
}

/** Writes the IEEE 754 binary32 bits of `v` little-endian at `p` (4 bytes; NaN payloads kept). */
static inline void tm_put_f32(uint8_t *p, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    tm_put_u32(p, bits);
}

/** Writes the IEEE 754 binary64 bits of `v` little-endian at `p` (8 bytes; NaN payloads kept). */
static inline void tm_put_f64(uint8_t *p, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    tm_put_u64(p, bits);
}

/** Reads a little-endian u16 at `p`. */
static inline uint16_t tm_get_u16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] | ((unsigned)p[1] << 8));
}

/** Reads a little-endian u32 at `p`. */
static inline uint32_t tm_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/** Reads a little-endian u64 at `p`. */
static inline uint64_t tm_get_u64(const uint8_t *p)
{
    return (uint64_t)tm_get_u32(p) | ((uint64_t)tm_get_u32(p + 4) << 32);
}

/** Reads a two's complement little-endian i64 at `p` (no implementation-defined conversion). */
static inline int64_t tm_get_i64(const uint8_t *p)
{
    uint64_t u = tm_get_u64(p);
    if (u <= (uint64_t)INT64_MAX) {
        return (int64_t)u;
    }
    return -(int64_t)(~u) - 1;
}

/** Reads little-endian IEEE 754 binary32 bits at `p` as a float. */
static inline float tm_get_f32(const uint8_t *p)
{
    uint32_t bits = tm_get_u32(p);
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/** Reads little-endian IEEE 754 binary64 bits at `p` as a double. */
static inline double tm_get_f64(const uint8_t *p)
{
    uint64_t bits = tm_get_u64(p);
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* ---- CRC-32C ------------------------------------------------------------------------------- */

/**
 * Continues a CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init and xorout 0xFFFFFFFF)
 * over `len` more bytes. `crc` is a finished CRC (0 to start), exactly like Rust
 * `crc32c::crc32c_append`: tm_crc32c_update(tm_crc32c_update(0, a, n), b, m) equals the CRC of
 * a followed by b. Uses a 16-entry nibble table (64 bytes of flash).
 */
static inline uint32_t tm_crc32c_update(uint32_t crc, const uint8_t *data, size_t len)
{
    static const uint32_t nibble[16] = {
        0x00000000u, 0x105EC76Fu, 0x20BD8EDEu, 0x30E349B1u, 0x417B1DBCu, 0x5125DAD3u,
        0x61C69362u, 0x7198540Du, 0x82F63B78u, 0x92A8FC17u, 0xA24BB5A6u, 0xB21572C9u,
        0xC38D26C4u, 0xD3D3E1ABu, 0xE330A81Au, 0xF36E6F75u,
    };
    size_t i;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ nibble[crc & 0x0Fu];
        crc = (crc >> 4) ^ nibble[crc & 0x0Fu];
    }
    return ~crc;
}

/** CRC-32C of `len` bytes (0 for an empty input), as the header's payload_crc. */
static inline uint32_t tm_crc32c(const uint8_t *data, size_t len)
{
    return tm_crc32c_update(0u, data, len);
}

/* ---- Encoding ------------------------------------------------------------------------------ */

/** Writes a 32-byte header at `buf` (internal helper of the encoders). */
static inline void tm_write_header(uint8_t *buf, uint8_t frame_type, uint16_t flags, uint16_t count,
                                   uint64_t device_id, uint64_t seq, uint32_t payload_len,
                                   uint32_t payload_crc)
{
    tm_put_u16(buf + TM_HEADER_OFF_MAGIC, (uint16_t)TM_MAGIC);
    buf[TM_HEADER_OFF_VERSION] = (uint8_t)TM_VERSION;
    buf[TM_HEADER_OFF_FRAME_TYPE] = frame_type;
    tm_put_u16(buf + TM_HEADER_OFF_FLAGS, flags);
    tm_put_u16(buf + TM_HEADER_OFF_COUNT, count);
    tm_put_u64(buf + TM_HEADER_OFF_DEVICE_ID, device_id);
    tm_put_u64(buf + TM_HEADER_OFF_SEQ, seq);
    tm_put_u32(buf + TM_HEADER_OFF_PAYLOAD_LEN, payload_len);
    tm_put_u32(buf + TM_HEADER_OFF_PAYLOAD_CRC, payload_crc);
}

/**
 * Starts a telemetry frame at buf[0] (header placeholder plus base timestamp).
 * `seq` must be >= 1 and strictly increasing per device; `flags` is 0 or TM_FLAG_RESENT.
 * Never fails loudly: if `buf` is NULL or `cap` is below TM_TELEMETRY_FRAME_SIZE(0), the
 * writer's status is set and every later push/finish returns that error.
 */
static inline tm_telemetry_writer tm_telemetry_begin(uint8_t *buf, size_t cap, uint64_t device_id,
                                                     uint64_t seq, uint16_t flags, int64_t base_ts_us)
{
    tm_telemetry_writer w;
    w.buf = buf;
    w.cap = cap;
    w.count = 0;
    w.status = TM_OK;
    if (buf == NULL) {
        w.status = TM_ERR_BAD_ARGUMENT;
    } else if (cap < TM_TELEMETRY_FRAME_SIZE(0u)) {
        w.status = TM_ERR_CAPACITY;
    } else {
        tm_write_header(buf, (uint8_t)TM_FRAME_TELEMETRY, flags, 0u, device_id, seq,
                        (uint32_t)TM_TELEMETRY_BASE_SIZE, 0u);
        tm_put_i64(buf + TM_HEADER_SIZE + TM_TELEMETRY_BASE_OFF_BASE_TS_US, base_ts_us);
    }
    return w;
}

/** How many more records fit in the writer's buffer (0 after an error). */
static inline uint32_t tm_telemetry_room(const tm_telemetry_writer *w)
{
    uint32_t used;
    size_t free_bytes;
    size_t fit;
    if (w == NULL || w->status != TM_OK) {
        return 0u;
    }
    used = TM_TELEMETRY_FRAME_SIZE((uint32_t)w->count);
    free_bytes = w->cap - (size_t)used;
    fit = free_bytes / TM_RECORD_SIZE;
    if (fit > (size_t)(TM_MAX_COUNT - w->count)) {
        fit = (size_t)(TM_MAX_COUNT - w->count);
    }
    return (uint32_t)fit;
}

/**
 * Appends one record (value bits are kept exactly, NaN included). Returns TM_OK,
 * TM_ERR_CAPACITY (buffer full), TM_ERR_TOO_MANY_RECORDS (65535 already) or the writer's
 * earlier error. Errors are sticky: tm_telemetry_finish() then fails too, so a dropped record
 * cannot go unnoticed; check tm_telemetry_room() first to split readings across frames.
 */
static inline int tm_telemetry_push(tm_telemetry_writer *w, uint16_t channel, uint16_t quality,
                                    uint32_t offset_us, double value)
{
    uint8_t *rec;
    if (w == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    if (w->status != TM_OK) {
        return w->status;
    }
    if (w->count == TM_MAX_COUNT) {
        w->status = TM_ERR_TOO_MANY_RECORDS;
        return w->status;
    }
    if (w->cap < (size_t)TM_TELEMETRY_FRAME_SIZE((uint32_t)w->count + 1u)) {
        w->status = TM_ERR_CAPACITY;
        return w->status;
    }
    rec = w->buf + TM_TELEMETRY_FRAME_SIZE((uint32_t)w->count);
    tm_put_u16(rec + TM_RECORD_OFF_CHANNEL, channel);
    tm_put_u16(rec + TM_RECORD_OFF_QUALITY, quality);
    tm_put_u32(rec + TM_RECORD_OFF_OFFSET_US, offset_us);
    tm_put_f64(rec + TM_RECORD_OFF_VALUE, value);
    w->count++;
    return TM_OK;
}

/**
 * Writes count, payload length and payload CRC into the header. Returns the frame length in
 * bytes (the frame is buf[0 .. length)), or the writer's negative error. A frame with no
 * record is encoded (as Rust TelemetryWriter does) but receivers refuse it (EmptyBatch).
 * May be called again after more pushes.
 */
static inline int32_t tm_telemetry_finish(tm_telemetry_writer *w)
{
    uint32_t payload_len;
    if (w == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    if (w->status != TM_OK) {
        return w->status;
    }
    payload_len = TM_TELEMETRY_BASE_SIZE + (uint32_t)w->count * TM_RECORD_SIZE;
    tm_put_u16(w->buf + TM_HEADER_OFF_COUNT, w->count);
    tm_put_u32(w->buf + TM_HEADER_OFF_PAYLOAD_LEN, payload_len);
    tm_put_u32(w->buf + TM_HEADER_OFF_PAYLOAD_CRC,
               tm_crc32c(w->buf + TM_HEADER_SIZE, (size_t)payload_len));
    return (int32_t)(TM_HEADER_SIZE + payload_len);
}

/**
 * Encodes an environment frame of `n` packets into buf[0..). Returns the frame length, or
 * TM_ERR_BAD_ARGUMENT (NULL buf, or NULL packets with n > 0), TM_ERR_TOO_MANY_RECORDS
 * (n > 65535) or TM_ERR_CAPACITY (cap < TM_ENVIRONMENT_FRAME_SIZE(n)); nothing is written on
 * error. Byte-for-byte identical to Rust `codecs::encode_environment`.
 */
static inline int32_t tm_encode_environment(uint8_t *buf, size_t cap, uint64_t device_id,
                                            uint64_t seq, uint16_t flags,
                                            const tm_env_fields *packets, size_t n)
{
    uint32_t payload_len;
    uint16_t i;
    if (buf == NULL || (packets == NULL && n > 0u)) {
        return TM_ERR_BAD_ARGUMENT;
    }
    if (n > TM_MAX_COUNT) {
        return TM_ERR_TOO_MANY_RECORDS;
    }
    payload_len = (uint32_t)n * TM_ENV_PACKET_SIZE;
    if (cap < (size_t)(TM_HEADER_SIZE + payload_len)) {
        return TM_ERR_CAPACITY;
    }
    for (i = 0; i < (uint16_t)n; i++) {
        uint8_t *p = buf + TM_HEADER_SIZE + (uint32_t)i * TM_ENV_PACKET_SIZE;
        tm_put_i64(p + TM_ENV_PACKET_OFF_TS_US, packets[i].ts_us);
        tm_put_f32(p + TM_ENV_PACKET_OFF_TEMPERATURE_C, packets[i].temperature_c);
        tm_put_f32(p + TM_ENV_PACKET_OFF_HUMIDITY_PCT, packets[i].humidity_pct);
        tm_put_f32(p + TM_ENV_PACKET_OFF_PRESSURE_HPA, packets[i].pressure_hpa);
        tm_put_u16(p + TM_ENV_PACKET_OFF_BATTERY_MV, packets[i].battery_mv);
        tm_put_u16(p + TM_ENV_PACKET_OFF_QUALITY, packets[i].quality);
    }
    tm_write_header(buf, (uint8_t)TM_FRAME_ENVIRONMENT, flags, (uint16_t)n, device_id, seq,
                    payload_len, tm_crc32c(buf + TM_HEADER_SIZE, (size_t)payload_len));
    return (int32_t)(TM_HEADER_SIZE + payload_len);
}

/* ---- Checking ------------------------------------------------------------------------------ */

/** The Rust defaults (4096 records, 30 days back, 5 minutes ahead). */
static inline tm_limits tm_limits_default(void)
{
    tm_limits l;
    l.max_records = (uint16_t)TM_DEFAULT_MAX_RECORDS;
    l.max_past_us = TM_DEFAULT_MAX_PAST_US;
    l.max_future_us = TM_DEFAULT_MAX_FUTURE_US;
    return l;
}

/** a + b, clamped to the int64_t range (Rust i64::saturating_add). */
static inline int64_t tm_sat_add_i64(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) {
        return INT64_MAX;
    }
    if (b < 0 && a < INT64_MIN - b) {
        return INT64_MIN;
    }
    return a + b;
}

/** a - b, clamped to the int64_t range (Rust i64::saturating_sub). */
static inline int64_t tm_sat_sub_i64(int64_t a, int64_t b)
{
    if (b < 0 && a > INT64_MAX + b) {
        return INT64_MAX;
    }
    if (b > 0 && a < INT64_MIN + b) {
        return INT64_MIN;
    }
    return a - b;
}

/** Records a failed rule in `info` and returns its reason (internal helper of tm_check_frame). */
static inline uint16_t tm_check_fail(tm_frame_info *info, uint16_t reason, uint64_t expected,
                                     uint64_t found)
{
    info->reason = reason;
    info->expected = expected;
    info->found = found;
    info->payload = NULL;
    return reason;
}

/** Telemetry payload rules (internal helper of tm_check_frame): non-finite values, then times. */
static inline uint16_t tm_check_records(tm_frame_info *info, const uint8_t *payload,
                                        int64_t min_us, int64_t max_us)
{
    int64_t base = tm_get_i64(payload + TM_TELEMETRY_BASE_OFF_BASE_TS_US);
    const uint8_t *records = payload + TM_TELEMETRY_BASE_SIZE;
    uint32_t i;
    for (i = 0; i < info->count; i++) {
        const uint8_t *r = records + i * TM_RECORD_SIZE;
        uint16_t channel = tm_get_u16(r + TM_RECORD_OFF_CHANNEL);
        uint16_t quality = tm_get_u16(r + TM_RECORD_OFF_QUALITY);
        uint64_t bits = tm_get_u64(r + TM_RECORD_OFF_VALUE);
        int non_finite = (bits & UINT64_C(0x7FF0000000000000)) == UINT64_C(0x7FF0000000000000);
        if (non_finite && channel < TM_RAW_CHANNEL_MIN && (quality & TM_QUALITY_FAULT) == 0u) {
            return tm_check_fail(info, (uint16_t)TM_REASON_NON_FINITE_VALUE, i, channel);
        }
    }
    for (i = 0; i < info->count; i++) {
        const uint8_t *r = records + i * TM_RECORD_SIZE;
        int64_t ts = tm_sat_add_i64(base, (int64_t)tm_get_u32(r + TM_RECORD_OFF_OFFSET_US));
        if (ts < min_us || ts > max_us) {
            return tm_check_fail(info, (uint16_t)TM_REASON_TIMESTAMP_OUT_OF_RANGE, i, (uint64_t)ts);
        }
    }
    return 0u;
}

/** Environment payload rules (internal helper of tm_check_frame), packet by packet. */
static inline uint16_t tm_check_packets(tm_frame_info *info, const uint8_t *payload,
                                        int64_t min_us, int64_t max_us)
{
    const uint32_t exp = 0x7F800000u;
    uint32_t i;
    for (i = 0; i < info->count; i++) {
        const uint8_t *p = payload + i * TM_ENV_PACKET_SIZE;
        int bad_t = (tm_get_u32(p + TM_ENV_PACKET_OFF_TEMPERATURE_C) & exp) == exp;
        int bad_h = (tm_get_u32(p + TM_ENV_PACKET_OFF_HUMIDITY_PCT) & exp) == exp;
        int bad_p = (tm_get_u32(p + TM_ENV_PACKET_OFF_PRESSURE_HPA) & exp) == exp;
        int64_t ts;
        if ((bad_t || bad_h || bad_p) &&
            (tm_get_u16(p + TM_ENV_PACKET_OFF_QUALITY) & TM_QUALITY_FAULT) == 0u) {
            uint16_t channel = (uint16_t)(bad_t   ? TM_CHANNEL_ENV_TEMPERATURE
                                          : bad_h ? TM_CHANNEL_ENV_HUMIDITY
                                                  : TM_CHANNEL_ENV_PRESSURE);
            return tm_check_fail(info, (uint16_t)TM_REASON_NON_FINITE_VALUE, i, channel);
        }
        ts = tm_get_i64(p + TM_ENV_PACKET_OFF_TS_US);
        if (ts < min_us || ts > max_us) {
            return tm_check_fail(info, (uint16_t)TM_REASON_TIMESTAMP_OUT_OF_RANGE, i, (uint64_t)ts);
        }
    }
    return 0u;
}

/**
 * Checks buf[0 .. len) as exactly one frame sent in `direction`, with the same rules in the
 * same order as Rust `codecs::decode`: Truncated, BadMagic, UnsupportedVersion,
 * UnknownFrameType, UnexpectedFrameType, ReservedFlags, LengthMismatch; for device frames
 * ZeroSequence, EmptyBatch, TooManyRecords; then CountMismatch, CrcMismatch; then for device
 * frames NonFiniteValue and TimestampOutOfRange against [now_us - max_past_us,
 * now_us + max_future_us] (saturating).
 *
 * Returns 0 when valid, else the TM_REASON_* code. `limits` may be NULL (Rust defaults).
 * `out_info` may be NULL; otherwise it receives the header fields, the reason and the
 * (expected, found) pair an error frame would carry, and on success a payload view for the
 * tm_frame_* accessors (valid while `buf` is). Reads only; never writes to `buf`.
 */
static inline uint16_t tm_check_frame(const uint8_t *buf, size_t len, tm_direction direction,
                                      const tm_limits *limits, int64_t now_us,
                                      tm_frame_info *out_info)
{
    tm_frame_info scratch;
    tm_frame_info *info = out_info != NULL ? out_info : &scratch;
    tm_limits lim = limits != NULL ? *limits : tm_limits_default();
    tm_direction frame_direction;
    uint16_t allowed_flags;
    uint32_t prefix_size;
    uint32_t record_size;
    uint64_t expected_len;
    uint32_t crc;
    const uint8_t *payload;
    int64_t min_us;
    int64_t max_us;

    memset(info, 0, sizeof *info);
    if (buf == NULL || len < TM_HEADER_SIZE) {
        return tm_check_fail(info, (uint16_t)TM_REASON_TRUNCATED, TM_HEADER_SIZE,
                             buf == NULL ? 0u : (uint64_t)len);
    }
    info->magic = tm_get_u16(buf + TM_HEADER_OFF_MAGIC);
    info->version = buf[TM_HEADER_OFF_VERSION];
    info->frame_type = buf[TM_HEADER_OFF_FRAME_TYPE];
    info->flags = tm_get_u16(buf + TM_HEADER_OFF_FLAGS);
    info->count = tm_get_u16(buf + TM_HEADER_OFF_COUNT);
    info->device_id = tm_get_u64(buf + TM_HEADER_OFF_DEVICE_ID);
    info->seq = tm_get_u64(buf + TM_HEADER_OFF_SEQ);
    info->payload_len = tm_get_u32(buf + TM_HEADER_OFF_PAYLOAD_LEN);
    info->payload_crc = tm_get_u32(buf + TM_HEADER_OFF_PAYLOAD_CRC);

    if (info->magic != TM_MAGIC) {
        return tm_check_fail(info, (uint16_t)TM_REASON_BAD_MAGIC, TM_MAGIC, info->magic);
    }
    if (info->version != TM_VERSION) {
        return tm_check_fail(info, (uint16_t)TM_REASON_UNSUPPORTED_VERSION, TM_VERSION,
                             info->version);
    }
    switch (info->frame_type) {
    case TM_FRAME_TELEMETRY:
        frame_direction = TM_DIRECTION_DEVICE_TO_SERVER;
        allowed_flags = (uint16_t)TM_FLAG_RESENT;
        prefix_size = TM_TELEMETRY_BASE_SIZE;
        record_size = TM_RECORD_SIZE;
        break;
    case TM_FRAME_ENVIRONMENT:
        frame_direction = TM_DIRECTION_DEVICE_TO_SERVER;
        allowed_flags = (uint16_t)TM_FLAG_RESENT;
        prefix_size = 0u;
        record_size = TM_ENV_PACKET_SIZE;
        break;
    case TM_FRAME_ACK:
        frame_direction = TM_DIRECTION_SERVER_TO_DEVICE;
        allowed_flags = 0u;
        prefix_size = 0u;
        record_size = 0u;
        break;
    case TM_FRAME_ERROR:
        frame_direction = TM_DIRECTION_SERVER_TO_DEVICE;
        allowed_flags = 0u;
        prefix_size = 0u;
        record_size = TM_ERROR_BODY_SIZE;
        break;
    case TM_FRAME_LIVE:
        frame_direction = TM_DIRECTION_SERVER_TO_DASHBOARD;
        allowed_flags = (uint16_t)TM_FLAG_COALESCED;
        prefix_size = 0u;
        record_size = TM_LIVE_RECORD_SIZE;
        break;
    default:
        return tm_check_fail(info, (uint16_t)TM_REASON_UNKNOWN_FRAME_TYPE, 0u, info->frame_type);
    }
    if (frame_direction != direction) {
        return tm_check_fail(info, (uint16_t)TM_REASON_UNEXPECTED_FRAME_TYPE, 0u,
                             info->frame_type);
    }
    if ((info->flags & (uint16_t)~allowed_flags) != 0u) {
        return tm_check_fail(info, (uint16_t)TM_REASON_RESERVED_FLAGS, allowed_flags, info->flags);
    }
    expected_len = (uint64_t)TM_HEADER_SIZE + info->payload_len;
    if (expected_len != (uint64_t)len) {
        return tm_check_fail(info, (uint16_t)TM_REASON_LENGTH_MISMATCH, expected_len,
                             (uint64_t)len);
    }
    if (direction == TM_DIRECTION_DEVICE_TO_SERVER) {
        if (info->seq == 0u) {
            return tm_check_fail(info, (uint16_t)TM_REASON_ZERO_SEQUENCE, 1u, 0u);
        }
        if (info->count == 0u) {
            return tm_check_fail(info, (uint16_t)TM_REASON_EMPTY_BATCH, 0u, 0u);
        }
        if (info->count > lim.max_records) {
            return tm_check_fail(info, (uint16_t)TM_REASON_TOO_MANY_RECORDS, lim.max_records,
                                 info->count);
        }
    }
    expected_len = (uint64_t)prefix_size + (uint64_t)info->count * record_size;
    if ((uint64_t)info->payload_len != expected_len) {
        return tm_check_fail(info, (uint16_t)TM_REASON_COUNT_MISMATCH, expected_len,
                             info->payload_len);
    }
    payload = buf + TM_HEADER_SIZE;
    crc = tm_crc32c(payload, (size_t)info->payload_len);
    if (crc != info->payload_crc) {
        return tm_check_fail(info, (uint16_t)TM_REASON_CRC_MISMATCH, info->payload_crc, crc);
    }
    if (info->frame_type == TM_FRAME_ERROR && info->payload_len != TM_ERROR_BODY_SIZE) {
        /* An error frame carries exactly one body; Rust reports any other count (0, or 2+
         * with a matching length) as CountMismatch here, after the CRC. */
        return tm_check_fail(info, (uint16_t)TM_REASON_COUNT_MISMATCH, expected_len,
                             info->payload_len);
    }
    min_us = tm_sat_sub_i64(now_us, lim.max_past_us);
    max_us = tm_sat_add_i64(now_us, lim.max_future_us);
    if (info->frame_type == TM_FRAME_TELEMETRY) {
        uint16_t reason = tm_check_records(info, payload, min_us, max_us);
        if (reason != 0u) {
            return reason;
        }
    } else if (info->frame_type == TM_FRAME_ENVIRONMENT) {
        uint16_t reason = tm_check_packets(info, payload, min_us, max_us);
        if (reason != 0u) {
            return reason;
        }
    }
    info->payload = payload;
    return 0u;
}

/* ---- Reading a checked frame --------------------------------------------------------------- */

/** Common precondition of the accessors (internal helper): a passed check of `frame_type`. */
static inline int tm_frame_require(const tm_frame_info *info, unsigned frame_type)
{
    if (info == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    if (info->reason != 0u || info->payload == NULL) {
        return TM_ERR_NOT_CHECKED;
    }
    if (info->frame_type != frame_type) {
        return TM_ERR_WRONG_FRAME_TYPE;
    }
    return TM_OK;
}

/** Base timestamp of a checked telemetry frame. Returns TM_OK or a negative TM_ERR_*. */
static inline int tm_frame_base_ts(const tm_frame_info *info, int64_t *base_ts_us)
{
    int rc = tm_frame_require(info, TM_FRAME_TELEMETRY);
    if (rc != TM_OK) {
        return rc;
    }
    if (base_ts_us == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    *base_ts_us = tm_get_i64(info->payload + TM_TELEMETRY_BASE_OFF_BASE_TS_US);
    return TM_OK;
}

/**
 * Record `index` of a checked telemetry frame, with its absolute time in `out->ts_us`.
 * Returns TM_OK, TM_ERR_INDEX (index >= count) or another negative TM_ERR_*.
 */
static inline int tm_frame_record(const tm_frame_info *info, uint16_t index, tm_record_fields *out)
{
    const uint8_t *r;
    int rc = tm_frame_require(info, TM_FRAME_TELEMETRY);
    if (rc != TM_OK) {
        return rc;
    }
    if (out == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    if (index >= info->count) {
        return TM_ERR_INDEX;
    }
    r = info->payload + TM_TELEMETRY_BASE_SIZE + (uint32_t)index * TM_RECORD_SIZE;
    out->channel = tm_get_u16(r + TM_RECORD_OFF_CHANNEL);
    out->quality = tm_get_u16(r + TM_RECORD_OFF_QUALITY);
    out->offset_us = tm_get_u32(r + TM_RECORD_OFF_OFFSET_US);
    out->value = tm_get_f64(r + TM_RECORD_OFF_VALUE);
    out->ts_us = tm_sat_add_i64(tm_get_i64(info->payload + TM_TELEMETRY_BASE_OFF_BASE_TS_US),
                                (int64_t)out->offset_us);
    return TM_OK;
}

/** Packet `index` of a checked environment frame. Returns TM_OK or a negative TM_ERR_*. */
static inline int tm_frame_env_packet(const tm_frame_info *info, uint16_t index, tm_env_fields *out)
{
    const uint8_t *p;
    int rc = tm_frame_require(info, TM_FRAME_ENVIRONMENT);
    if (rc != TM_OK) {
        return rc;
    }
    if (out == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    if (index >= info->count) {
        return TM_ERR_INDEX;
    }
    p = info->payload + (uint32_t)index * TM_ENV_PACKET_SIZE;
    out->ts_us = tm_get_i64(p + TM_ENV_PACKET_OFF_TS_US);
    out->temperature_c = tm_get_f32(p + TM_ENV_PACKET_OFF_TEMPERATURE_C);
    out->humidity_pct = tm_get_f32(p + TM_ENV_PACKET_OFF_HUMIDITY_PCT);
    out->pressure_hpa = tm_get_f32(p + TM_ENV_PACKET_OFF_PRESSURE_HPA);
    out->battery_mv = tm_get_u16(p + TM_ENV_PACKET_OFF_BATTERY_MV);
    out->quality = tm_get_u16(p + TM_ENV_PACKET_OFF_QUALITY);
    return TM_OK;
}

/**
 * Acknowledged sequence of a checked ack frame: every frame with seq <= *acked_seq is stored
 * and may be dropped from the device's resend buffer. Returns TM_OK or a negative TM_ERR_*.
 */
static inline int tm_frame_acked_seq(const tm_frame_info *info, uint64_t *acked_seq)
{
    int rc = tm_frame_require(info, TM_FRAME_ACK);
    if (rc != TM_OK) {
        return rc;
    }
    if (acked_seq == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    *acked_seq = info->seq;
    return TM_OK;
}

/** Body and refused sequence of a checked error frame. Returns TM_OK or a negative TM_ERR_*. */
static inline int tm_frame_error(const tm_frame_info *info, tm_error_fields *out)
{
    const uint8_t *b;
    int rc = tm_frame_require(info, TM_FRAME_ERROR);
    if (rc != TM_OK) {
        return rc;
    }
    if (out == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    b = info->payload;
    out->refused_seq = info->seq;
    out->reason = tm_get_u16(b + TM_ERROR_BODY_OFF_REASON);
    out->rejected_type = b[TM_ERROR_BODY_OFF_REJECTED_TYPE];
    out->reserved = b[TM_ERROR_BODY_OFF_RESERVED];
    out->expected = tm_get_u64(b + TM_ERROR_BODY_OFF_EXPECTED);
    out->found = tm_get_u64(b + TM_ERROR_BODY_OFF_FOUND);
    return TM_OK;
}

/** Record `index` of a checked live frame. Returns TM_OK or a negative TM_ERR_*. */
static inline int tm_frame_live_record(const tm_frame_info *info, uint16_t index,
                                       tm_live_fields *out)
{
    const uint8_t *r;
    int rc = tm_frame_require(info, TM_FRAME_LIVE);
    if (rc != TM_OK) {
        return rc;
    }
    if (out == NULL) {
        return TM_ERR_BAD_ARGUMENT;
    }
    if (index >= info->count) {
        return TM_ERR_INDEX;
    }
    r = info->payload + (uint32_t)index * TM_LIVE_RECORD_SIZE;
    out->device_id = tm_get_u64(r + TM_LIVE_RECORD_OFF_DEVICE_ID);
    out->ts_us = tm_get_i64(r + TM_LIVE_RECORD_OFF_TS_US);
    out->value = tm_get_f64(r + TM_LIVE_RECORD_OFF_VALUE);
    out->channel = tm_get_u16(r + TM_LIVE_RECORD_OFF_CHANNEL);
    out->quality = tm_get_u16(r + TM_LIVE_RECORD_OFF_QUALITY);
    return TM_OK;
}

#endif /* TELEMUX_WIRE_H */
