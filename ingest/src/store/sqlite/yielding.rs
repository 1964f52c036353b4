//! Long statements offer their core to other threads, unless the machine is saturated.
//!
//! A move step, a clear step or a long history read is one SQLite statement of several
//! milliseconds, and Linux lets a running thread finish its time slice before a woken one takes
//! its core. With spare CPU, a device frame or a dashboard send that woke during such a statement
//! waited for it: that was half the live p99 with 1 or 100 dashboards. So the store's
//! connections call `sched_yield` every [`YIELD_EVERY_OPS`] steps of a statement (SQLite's
//! progress handler; it never interrupts the statement). Unlike a lower priority for the storage
//! threads (`nice`, `SCHED_IDLE`), a yield does not let other processes starve the store.
//!
//! On a saturated machine a yield is not free: the yielding thread goes behind every runnable
//! thread, so the writer's statements, and the batches and acks queued behind them, take longer,
//! and devices are pushed back. The writer therefore yields only while it has not been kept
//! waiting for a CPU itself ([`CpuWait`]: it stops above 40% of its busy time, resumes below
//! 25%). Measured (`BENCHMARKS.md`, "2026-12-06: the writer yields only with a core to spare",
//! medians of 4-6 alternating runs, single 40% threshold): at 1 dashboard the live
//! p99 was 1.98 ms with yields, 3.12 ms without, 1.92 ms with this rule; at 1,000 dashboards
//! (both cores saturated) 104.2 ms with yields, 73.5 ms without, 64.4 ms with this rule (ack p50
//! 73 / 54 / 51 ms). The writer waited for a CPU 17-23% of its busy time at 1 or 100 dashboards,
//! 59-78% at 1,000.

use std::thread::ThreadId;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// SQLite virtual-machine steps between two offers of the CPU: about every 0.4 ms of the writer's
/// time at 100k readings/s in. 1,000 did no better; 100,000 gave back half of the gain.
const YIELD_EVERY_OPS: i32 = 10_000;

/// Above this share of its busy time spent waiting for a CPU (run queue), the writer counts the
/// machine as saturated and stops yielding (measured shares: see the module doc).
const SATURATED_ABOVE_PERCENT: u64 = 40;

/// Below this share a saturated writer yields again. Lower than
/// [`SATURATED_ABOVE_PERCENT`] because the yields themselves add to the writer's wait: without
/// a gap, stopping them could end the saturation it measured, and the verdict would flip every
/// sample.
const SPARE_BELOW_PERCENT: u64 = 25;

/// How often the writer re-reads its scheduler statistics.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Busy time (running plus waiting) below which a sample is too short to judge; the previous
/// verdict stands.
const MIN_BUSY: Duration = Duration::from_millis(5);

/// Makes a read connection offer its CPU to other runnable threads every [`YIELD_EVERY_OPS`]
/// steps of a statement. Read connections run on tokio's blocking threads, one query at a time
/// each, and hold up nothing but their own query.
pub(super) fn yield_within_statements(conn: &mut Connection) -> rusqlite::Result<()> {
    // `false`: never interrupt; the handler only offers the core.
    conn.progress_handler(
        YIELD_EVERY_OPS,
        Some(|| {
            std::thread::yield_now();
            false
        }),
    )
}

/// The writer's variant of [`yield_within_statements`]: it yields only while [`CpuWait`] does
/// not find the machine saturated. Install it on the connection that the writer thread uses.
pub(super) fn yield_within_statements_unless_saturated(
    conn: &mut Connection,
) -> rusqlite::Result<()> {
    let mut wait = CpuWait::default();
    conn.progress_handler(
        YIELD_EVERY_OPS,
        Some(move || {
            let thread = std::thread::current().id();
            if !wait.saturated(Instant::now(), thread, read_own_schedstat) {
                std::thread::yield_now();
            }
            false
        }),
    )
}

/// Tells, from the calling thread's scheduler statistics, whether it spends a large share of its
/// busy time waiting for a CPU (the machine has no core to spare).
#[derive(Debug, Default)]
struct CpuWait {
    /// When the statistics were last read (or tried).
    read_at: Option<Instant>,
    /// The start of the current window: the thread it was read on and what it said.
    base: Option<(ThreadId, Schedstat)>,
    /// The verdict of the last window long enough to judge.
    saturated: bool,
}

/// Cumulative nanoseconds a thread has run and has waited on a run queue (Linux
/// `/proc/thread-self/schedstat`, first two fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedstat {
    run_ns: u64,
    wait_ns: u64,
}

impl CpuWait {
    /// The verdict at `now` for the calling thread `thread`, re-sampled with `read` at most
    /// every [`SAMPLE_EVERY`]. Without statistics (another OS, a kernel without them) it is not
    /// saturated: the writer yields, as the read connections do.
    fn saturated(
        &mut self,
        now: Instant,
        thread: ThreadId,
        read: impl FnOnce() -> Option<Schedstat>,
    ) -> bool {
        if self
            .read_at
            .is_some_and(|at| now.duration_since(at) < SAMPLE_EVERY)
        {
            return self.saturated;
        }
        self.read_at = Some(now);
        let Some(stat) = read() else {
            self.base = None;
            self.saturated = false;
            return false;
        };
        let Some((_, base)) = self.base.filter(|(t, _)| *t == thread) else {
            // First sample on this thread: a window starts.
            self.base = Some((thread, stat));
            return self.saturated;
        };
        let run = stat.run_ns.saturating_sub(base.run_ns);
        let wait = stat.wait_ns.saturating_sub(base.wait_ns);
        let busy = run + wait;
        if busy < MIN_BUSY.as_nanos() as u64 {
            // Too little to judge: keep the verdict and the window's start.
            return self.saturated;
        }
        let percent = wait * 100 / busy;
        if percent > SATURATED_ABOVE_PERCENT {
            self.saturated = true;
        } else if percent < SPARE_BELOW_PERCENT {
            self.saturated = false;
        }
        self.base = Some((thread, stat));
        self.saturated
    }
}

/// The calling thread's [`Schedstat`].
fn read_own_schedstat() -> Option<Schedstat> {
    parse_schedstat(&std::fs::read_to_string("/proc/thread-self/schedstat").ok()?)
}

fn parse_schedstat(text: &str) -> Option<Schedstat> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    Some(Schedstat {
        run_ns: fields.next()?.ok()?,
        wait_ns: fields.next()?.ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement of about 100,000 steps: 1 + 2 + ... + 20,000.
    const LONG: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000) \
                        SELECT sum(x) FROM c";

    #[test]
    fn the_yielding_handlers_let_long_statements_finish() {
        let mut conn = Connection::open_in_memory().expect("open");
        // The statement is long enough to reach a handler set at the same interval: one that
        // asks to stop does stop it.
        conn.progress_handler(YIELD_EVERY_OPS, Some(|| true))
            .expect("install");
        let stopped = conn.query_row(LONG, [], |r| r.get::<_, i64>(0));
        assert!(
            matches!(&stopped, Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)),
            "{stopped:?}"
        );
        // The store's handlers only yield: the same statement completes with the right sum.
        yield_within_statements(&mut conn).expect("install");
        let sum: i64 = conn.query_row(LONG, [], |r| r.get(0)).expect("completes");
        assert_eq!(sum, 20_000 * 20_001 / 2);
        yield_within_statements_unless_saturated(&mut conn).expect("install");
        for _ in 0..3 {
            let sum: i64 = conn.query_row(LONG, [], |r| r.get(0)).expect("completes");
            assert_eq!(sum, 20_000 * 20_001 / 2);
        }
    }

    fn stat(run_ms: u64, wait_ms: u64) -> Option<Schedstat> {
        Some(Schedstat {
            run_ns: run_ms * 1_000_000,
            wait_ns: wait_ms * 1_000_000,
        })
    }

    #[test]
    fn the_writer_stops_yielding_while_it_waits_for_a_cpu_and_resumes_after() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let me = std::thread::current().id();
        let other = std::thread::spawn(|| std::thread::current().id())
            .join()
            .expect("thread");
        let mut w = CpuWait::default();
        assert!(
            !w.saturated(at(0), me, || stat(1_000, 1_000)),
            "no window yet"
        );
        // Within the sample interval the statistics are not read again.
        assert!(!w.saturated(at(50), me, || panic!("read too early")));
        // 80 ms run, 20 ms waiting: 20%, spare CPU.
        assert!(!w.saturated(at(100), me, || stat(1_080, 1_020)));
        // 40 ms run, 60 ms waiting: 60%, saturated.
        assert!(w.saturated(at(200), me, || stat(1_120, 1_080)));
        assert!(w.saturated(at(250), me, || panic!("read too early")));
        // Idle (blocked on its queue, neither running nor waiting): the verdict stands.
        assert!(w.saturated(at(300), me, || stat(1_121, 1_081)));
        // The short window is not lost: it goes on. 70 ms run, 30 ms waiting: 30%, between the
        // two thresholds, so still saturated (the yields' own waiting must not flip it back).
        assert!(w.saturated(at(400), me, || stat(1_190, 1_110)));
        // 80 ms run, 20 ms waiting: 20%, spare again.
        assert!(!w.saturated(at(500), me, || stat(1_270, 1_130)));
        // 40 ms run, 60 ms waiting, but read on another thread: a new window, no verdict yet.
        assert!(!w.saturated(at(600), other, || stat(40, 60)));
        assert!(w.saturated(at(700), other, || stat(80, 120)));
        // No statistics: the writer yields. The next good read starts a new window.
        assert!(!w.saturated(at(800), other, || None));
        assert!(!w.saturated(at(850), other, || panic!("read too early")));
        assert!(!w.saturated(at(900), other, || stat(100, 200)));
    }

    #[test]
    fn schedstat_is_read_from_the_kernel_format() {
        assert_eq!(
            parse_schedstat("1287413870 201236443 3551\n"),
            Some(Schedstat {
                run_ns: 1_287_413_870,
                wait_ns: 201_236_443
            })
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("12 x 3"), None);
        // Where the kernel has them (Linux with sched info), they count this thread's time.
        if let Some(before) = read_own_schedstat() {
            // Runnable for 20 ms: running or waiting for a CPU, the two fields grow by as much.
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(20) {
                std::hint::black_box(0u64);
            }
            // The kernel adds the time up when the thread stops.
            std::thread::sleep(Duration::from_millis(1));
            let after = read_own_schedstat().expect("read again");
            let grew = (after.run_ns + after.wait_ns) - (before.run_ns + before.wait_ns);
            assert!(
                grew >= 15_000_000,
                "20 ms runnable, {grew} ns counted: {before:?} -> {after:?}"
            );
        }
    }
}
