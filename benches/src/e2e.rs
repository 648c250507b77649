//! Shared by the end-to-end benchmark (`src/bin/e2e.rs`) and its client
//! processes (`src/bin/e2e_client.rs`): a mergeable latency histogram, the
//! `_sim` marker reader, and per-process CPU and memory from `/proc`.

use std::fmt::Write as _;

use serde_json::Value;

/// Values below this are kept exactly (one bucket per microsecond).
const EXACT: u64 = 256;
/// Sub-buckets per power of two above `EXACT`: 1/128 relative precision.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two above `EXACT` kept (up to 2^(8+56) µs: everything).
const OCTAVES: u64 = 56;

/// A log-linear histogram of microseconds: exact below 256 µs, then 128
/// buckets per power of two (under 0.8 % error). Merged by adding counts,
/// written as sparse `[[lower_bound, count], …]` pairs.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    #[must_use]
    pub fn new() -> Self {
        Self {
            counts: vec![0; usize::try_from(EXACT + OCTAVES * SUB).unwrap_or(0)],
            total: 0,
            max: 0,
        }
    }

    fn index(value: u64) -> usize {
        let index = if value < EXACT {
            value
        } else {
            let octave = u64::from(value.ilog2()); // >= 8
            let sub = (value >> (octave - u64::from(SUB_BITS))) & (SUB - 1);
            EXACT + (octave - 8) * SUB + sub
        };
        usize::try_from(index).unwrap_or(usize::MAX)
    }

    fn lower_bound(index: usize) -> u64 {
        let index = index as u64;
        if index < EXACT {
            return index;
        }
        let octave = (index - EXACT) / SUB + 8;
        let sub = (index - EXACT) % SUB;
        (SUB + sub) << (octave - u64::from(SUB_BITS))
    }

    /// Counts one value.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Counts a value `n` times.
    pub fn record_n(&mut self, value: u64, n: u64) {
        let index = Self::index(value).min(self.counts.len() - 1);
        self.counts[index] += n;
        self.total += n;
        self.max = self.max.max(value);
    }

    /// Values counted.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The largest value counted.
    #[must_use]
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0 to 1): the lower bound of its bucket.
    #[must_use]
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank within the count"
        )]
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::lower_bound(index).min(self.max);
            }
        }
        self.max
    }

    /// `[[lower_bound, count], …]` for the buckets that are not empty, and
    /// the maximum: `{"max": M, "buckets": [...]}`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let buckets: Vec<Value> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(index, count)| Value::from(vec![Self::lower_bound(index), *count]))
            .collect();
        serde_json::json!({ "max": self.max, "buckets": buckets })
    }

    /// Reads what [`to_json`](Self::to_json) wrote; `None` if it is not that.
    #[must_use]
    pub fn from_json(value: &Value) -> Option<Self> {
        let mut histogram = Self::new();
        for pair in value.get("buckets")?.as_array()? {
            let value = pair.get(0)?.as_u64()?;
            let count = pair.get(1)?.as_u64()?;
            histogram.record_n(value, count);
        }
        histogram.max = value.get("max")?.as_u64()?;
        Some(histogram)
    }
}

/// A dispatch's `_sim` marker: `"_sim":{"shard":S,"n":N,"sent_at_us":T}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The shard.
    pub shard: u64,
    /// The shard's dispatch counter (from 1, no gap).
    pub n: u64,
    /// Unix microseconds when the sim made the dispatch.
    pub sent_at_us: u64,
}

const MARKER: &[u8] = b"\"_sim\":{\"shard\":";

/// Reads the last `_sim` marker of a payload, by text (no parse).
#[must_use]
pub fn marker(payload: &[u8]) -> Option<Marker> {
    let at = memchr::memmem::rfind(payload, MARKER)?;
    let rest = &payload[at + MARKER.len()..];
    let (shard, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"n\":")?;
    let (n, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"sent_at_us\":")?;
    let (sent_at_us, _) = number(rest)?;
    Some(Marker {
        shard,
        n,
        sent_at_us,
    })
}

fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let len = bytes.iter().position(|b| !b.is_ascii_digit())?;
    if len == 0 || len > 19 {
        return None;
    }
    let mut value = 0u64;
    for digit in &bytes[..len] {
        value = value * 10 + u64::from(digit - b'0');
    }
    Some((value, &bytes[len..]))
}

/// The wall clock in Unix microseconds: the clock of the sim's
/// `sent_at_us`, shared by every process on this machine.
#[must_use]
pub fn now_us() -> u64 {
    #[allow(
        clippy::disallowed_methods,
        reason = "the markers carry Unix wall time from another process; only SystemTime compares with it"
    )]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// CPU time and memory of one process, from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// `VmRSS`, in KiB.
    pub rss_kb: u64,
    /// `VmHWM` (peak RSS), in KiB.
    pub hwm_kb: u64,
}

/// `/proc/<pid>/stat` and `/proc/<pid>/status` of one process; `None` if it
/// is gone.
#[must_use]
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after its `)`.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // Fields 14 and 15 of proc(5) (utime, stime) are 11 and 12 after `)`.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcStat {
        cpu_ticks: utime + stime,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
    })
}

/// The process `pid` and all its descendants (children found through each
/// process's `ppid` in `/proc/*/stat`).
#[must_use]
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let parent = stat
                .rfind(')')
                .and_then(|at| stat.get(at + 2..))
                .and_then(|rest| rest.split(' ').nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(parent) = parent {
                parents.push((child, parent));
            }
        }
    }
    let mut tree = vec![pid];
    let mut at = 0;
    while at < tree.len() {
        let parent = tree[at];
        tree.extend(
            parents
                .iter()
                .filter(|(_, of)| *of == parent)
                .map(|(child, _)| *child),
        );
        at += 1;
    }
    tree
}

/// [`proc_stat`] summed over `pid` and its descendants.
#[must_use]
pub fn tree_stat(pid: u32) -> ProcStat {
    process_tree(pid)
        .into_iter()
        .filter_map(proc_stat)
        .fold(ProcStat::default(), |sum, p| ProcStat {
            cpu_ticks: sum.cpu_ticks + p.cpu_ticks,
            rss_kb: sum.rss_kb + p.rss_kb,
            hwm_kb: sum.hwm_kb + p.hwm_kb,
        })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 where it cannot be
/// asked).
#[must_use]
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

/// A Markdown table from a header and rows.
#[must_use]
pub fn table(header: &[&str], align_right_from: usize, rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let rule: Vec<&str> = (0..header.len())
        .map(|i| if i < align_right_from { "---" } else { "---:" })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            #[allow(clippy::cast_precision_loss)]
            let got = h.quantile(q) as f64;
            assert!((got - exact).abs() / exact < 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.max(), 100_000);
        let back = Histogram::from_json(&h.to_json()).unwrap();
        assert_eq!(back.len(), h.len());
        assert_eq!(back.quantile(0.99), h.quantile(0.99));
        let mut merged = Histogram::new();
        merged.merge(&h);
        merged.merge(&back);
        assert_eq!(merged.len(), 200_000);
        assert_eq!(merged.quantile(0.5), h.quantile(0.5));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        h.record(7);
        h.record(255);
        assert_eq!(h.quantile(0.5), 7);
        assert_eq!(h.quantile(1.0), 255);
    }

    #[test]
    fn marker_is_read_from_the_end() {
        let payload = br#"{"t":"X","s":3,"op":0,"d":{"a":{"_sim":{"shard":9,"n":1,"sent_at_us":1}},"_sim":{"shard":2,"n":41,"sent_at_us":1732780800000001}}}"#;
        assert_eq!(
            marker(payload),
            Some(Marker {
                shard: 2,
                n: 41,
                sent_at_us: 1_732_780_800_000_001
            })
        );
        assert_eq!(marker(b"{}"), None);
    }

    #[test]
    fn own_process_is_read() {
        let stat = proc_stat(std::process::id()).unwrap();
        assert!(stat.rss_kb > 0);
        assert!(process_tree(std::process::id()).contains(&std::process::id()));
    }
}
