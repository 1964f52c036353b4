/*
 * Test harness for telemux_wire.h, driven by codecs/tests/c_header.rs.
 *
 * Reads whitespace-separated commands on stdin and answers each with text lines ending in
 * "end". Numbers are decimal; floats travel as the hex of their IEEE 754 bits so NaN payloads
 * and -0.0 compare exactly; frames travel as "<len> <hex>" ("-" for no bytes).
 *
 *   check <direction 0|1|2> <max_records> <max_past_us> <max_future_us> <now_us> <len> <hex>
 *     -> result <reason> <expected> <found>
 *        header <magic> <version> <type> <flags> <count> <device_id> <seq> <payload_len> <crc>
 *        then, when valid, one line per field group:
 *        base <base_ts_us> / record <channel> <quality> <offset_us> <value_bits> <ts_us>
 *        env <ts_us> <t_bits> <h_bits> <p_bits> <battery_mv> <quality> / ack <acked_seq>
 *        error <refused_seq> <reason> <rejected_type> <reserved> <expected> <found>
 *        live <device_id> <ts_us> <value_bits> <channel> <quality>
 *   telemetry <cap> <device_id> <seq> <flags> <base_ts_us> <n> (<channel> <quality> <offset_us> <value_bits>)*n
 *     -> room <records that fit after begin>, push <rc> per record, encoded <finish rc> <hex>
 *   environment <cap> <device_id> <seq> <flags> <n> (<ts_us> <t_bits> <h_bits> <p_bits> <battery_mv> <quality>)*n
 *     -> encoded <rc> <hex>
 *   crc <split> <len> <hex>
 *     -> crc <one-shot crc> <crc of bytes [0, split) continued over [split, len)>
 *
 * Exit status: 0 after end of input, 2 on a malformed command (with a message on stderr).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "telemux_wire.h"

/* Largest frame the harness handles (the tests stay far below it). */
#define MAX_FRAME 65536u
/* Largest token: a MAX_FRAME frame in hex. */
#define MAX_TOKEN (2u * MAX_FRAME + 1u)
/* Largest environment packet count per command. */
#define MAX_PACKETS 1024u

static char token[MAX_TOKEN];
static uint8_t frame[MAX_FRAME];
static tm_env_fields packets[MAX_PACKETS];

static void die(const char *what)
{
    fprintf(stderr, "harness: %s\n", what);
    exit(2);
}

/* Reads the next whitespace-separated token into `token`; returns 0 at end of input. */
static int next_token(void)
{
    size_t n = 0;
    int c = getchar();
    while (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
        c = getchar();
    }
    if (c == EOF) {
        return 0;
    }
    while (c != EOF && c != ' ' && c != '\n' && c != '\t' && c != '\r') {
        if (n + 1u >= MAX_TOKEN) {
            die("token too long");
        }
        token[n++] = (char)c;
        c = getchar();
    }
    token[n] = '\0';
    return 1;
}

static void expect_token(void)
{
    if (!next_token()) {
        die("unexpected end of input");
    }
}

static uint64_t read_u64(void)
{
    char *end;
    unsigned long long v;
    expect_token();
    v = strtoull(token, &end, 10);
    if (*end != '\0') {
        die("bad unsigned number");
    }
    return (uint64_t)v;
}

static int64_t read_i64(void)
{
    char *end;
    long long v;
    expect_token();
    v = strtoll(token, &end, 10);
    if (*end != '\0') {
        die("bad signed number");
    }
    return (int64_t)v;
}

static uint64_t read_bits(void)
{
    char *end;
    unsigned long long v;
    expect_token();
    v = strtoull(token, &end, 16);
    if (*end != '\0') {
        die("bad hex bits");
    }
    return (uint64_t)v;
}

static double f64_from_bits(uint64_t bits)
{
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static uint64_t f64_bits(double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits;
}

static float f32_from_bits(uint32_t bits)
{
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static uint32_t f32_bits(float v)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    die("bad hex digit");
    return 0;
}

/* Reads "<len> <hex>" into `frame`; returns len. */
static size_t read_frame(void)
{
    uint64_t len = read_u64();
    size_t i;
    if (len > MAX_FRAME) {
        die("frame too long");
    }
    expect_token();
    if (len == 0u) {
        if (strcmp(token, "-") != 0) {
            die("empty frame must be written as -");
        }
        return 0u;
    }
    if (strlen(token) != 2u * (size_t)len) {
        die("hex length differs from the frame length");
    }
    for (i = 0; i < (size_t)len; i++) {
        frame[i] = (uint8_t)(hex_digit(token[2u * i]) * 16 + hex_digit(token[2u * i + 1u]));
    }
    return (size_t)len;
}

static void print_hex(const uint8_t *bytes, size_t len)
{
    size_t i;
    if (len == 0u) {
        putchar('-');
    }
    for (i = 0; i < len; i++) {
        printf("%02x", (unsigned)bytes[i]);
    }
}

static void cmd_check(void)
{
    tm_frame_info info;
    tm_limits limits;
    tm_direction direction;
    int64_t now_us;
    size_t len;
    uint16_t reason;
    uint16_t i;
    uint64_t d = read_u64();
    if (d > 2u) {
        die("bad direction");
    }
    direction = (tm_direction)d;
    limits.max_records = (uint16_t)read_u64();
    limits.max_past_us = read_i64();
    limits.max_future_us = read_i64();
    now_us = read_i64();
    len = read_frame();

    reason = tm_check_frame(frame, len, direction, &limits, now_us, &info);
    printf("result %u %" PRIu64 " %" PRIu64 "\n", (unsigned)reason, info.expected, info.found);
    printf("header %u %u %u %u %u %" PRIu64 " %" PRIu64 " %" PRIu32 " %" PRIu32 "\n",
           (unsigned)info.magic, (unsigned)info.version, (unsigned)info.frame_type,
           (unsigned)info.flags, (unsigned)info.count, info.device_id, info.seq,
           info.payload_len, info.payload_crc);
    if (reason == 0u) {
        int64_t base;
        uint64_t acked;
        tm_error_fields err;
        if (tm_frame_base_ts(&info, &base) == TM_OK) {
            printf("base %" PRId64 "\n", base);
        }
        for (i = 0; i < info.count; i++) {
            tm_record_fields r;
            tm_env_fields p;
            tm_live_fields l;
            if (tm_frame_record(&info, i, &r) == TM_OK) {
                printf("record %u %u %" PRIu32 " %016" PRIx64 " %" PRId64 "\n", (unsigned)r.channel,
                       (unsigned)r.quality, r.offset_us, f64_bits(r.value), r.ts_us);
            }
            if (tm_frame_env_packet(&info, i, &p) == TM_OK) {
                printf("env %" PRId64 " %08" PRIx32 " %08" PRIx32 " %08" PRIx32 " %u %u\n", p.ts_us,
                       f32_bits(p.temperature_c), f32_bits(p.humidity_pct),
                       f32_bits(p.pressure_hpa), (unsigned)p.battery_mv, (unsigned)p.quality);
            }
            if (tm_frame_live_record(&info, i, &l) == TM_OK) {
                printf("live %" PRIu64 " %" PRId64 " %016" PRIx64 " %u %u\n", l.device_id, l.ts_us,
                       f64_bits(l.value), (unsigned)l.channel, (unsigned)l.quality);
            }
        }
        if (tm_frame_acked_seq(&info, &acked) == TM_OK) {
            printf("ack %" PRIu64 "\n", acked);
        }
        if (tm_frame_error(&info, &err) == TM_OK) {
            printf("error %" PRIu64 " %u %u %u %" PRIu64 " %" PRIu64 "\n", err.refused_seq,
                   (unsigned)err.reason, (unsigned)err.rejected_type, (unsigned)err.reserved,
                   err.expected, err.found);
        }
    }
}

static void cmd_telemetry(void)
{
    uint64_t cap = read_u64();
    uint64_t device_id = read_u64();
    uint64_t seq = read_u64();
    uint16_t flags = (uint16_t)read_u64();
    int64_t base = read_i64();
    uint64_t n = read_u64();
    uint64_t i;
    int32_t len;
    tm_telemetry_writer w;
    if (cap > MAX_FRAME) {
        die("capacity above the harness buffer");
    }
    w = tm_telemetry_begin(frame, (size_t)cap, device_id, seq, flags, base);
    printf("room %" PRIu32 "\n", tm_telemetry_room(&w));
    for (i = 0; i < n; i++) {
        uint16_t channel = (uint16_t)read_u64();
        uint16_t quality = (uint16_t)read_u64();
        uint32_t offset_us = (uint32_t)read_u64();
        double value = f64_from_bits(read_bits());
        printf("push %d\n", tm_telemetry_push(&w, channel, quality, offset_us, value));
    }
    len = tm_telemetry_finish(&w);
    printf("encoded %" PRId32 " ", len);
    print_hex(frame, len > 0 ? (size_t)len : 0u);
    putchar('\n');
}

static void cmd_environment(void)
{
    uint64_t cap = read_u64();
    uint64_t device_id = read_u64();
    uint64_t seq = read_u64();
    uint16_t flags = (uint16_t)read_u64();
    uint64_t n = read_u64();
    uint64_t i;
    int32_t len;
    if (cap > MAX_FRAME) {
        die("capacity above the harness buffer");
    }
    if (n > MAX_PACKETS) {
        die("too many packets for the harness");
    }
    for (i = 0; i < n; i++) {
        packets[i].ts_us = read_i64();
        packets[i].temperature_c = f32_from_bits((uint32_t)read_bits());
        packets[i].humidity_pct = f32_from_bits((uint32_t)read_bits());
        packets[i].pressure_hpa = f32_from_bits((uint32_t)read_bits());
        packets[i].battery_mv = (uint16_t)read_u64();
        packets[i].quality = (uint16_t)read_u64();
    }
    len = tm_encode_environment(frame, (size_t)cap, device_id, seq, flags, packets, (size_t)n);
    printf("encoded %" PRId32 " ", len);
    print_hex(frame, len > 0 ? (size_t)len : 0u);
    putchar('\n');
}

static void cmd_crc(void)
{
    uint64_t split = read_u64();
    size_t len = read_frame();
    uint32_t whole;
    uint32_t parts;
    if (split > len) {
        die("crc split past the end");
    }
    whole = tm_crc32c(frame, len);
    parts = tm_crc32c_update(tm_crc32c_update(0u, frame, (size_t)split), frame + split,
                             len - (size_t)split);
    printf("crc %" PRIu32 " %" PRIu32 "\n", whole, parts);
}

int main(void)
{
    while (next_token()) {
        if (strcmp(token, "check") == 0) {
            cmd_check();
        } else if (strcmp(token, "telemetry") == 0) {
            cmd_telemetry();
        } else if (strcmp(token, "environment") == 0) {
            cmd_environment();
        } else if (strcmp(token, "crc") == 0) {
            cmd_crc();
        } else {
            die("unknown command");
        }
        puts("end");
    }
    return 0;
}
