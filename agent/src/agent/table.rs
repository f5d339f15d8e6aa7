//! The CLI's tables: columns padded to their widest cell, and the two views it prints
//! (`herd service ls`, `herd ps`). Empty values show as `-` so every row has every column
//! and `awk` can split them. Also the line `herd events` prints per event.

use crate::agent::types::{Event, InstanceInfo, ServiceInfo, SnapshotState};
use crate::fleet::InstanceStatus;

/// Rows under a header, rendered with columns aligned.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells show as `-`, extra ones are dropped.
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.headers.len(), "-".to_owned());
        self.rows.push(cells);
    }

    /// The header and rows, two spaces between columns, no trailing spaces, one line each.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = w - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `herd service ls`.
pub fn services(list: &[ServiceInfo]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "IMAGE",
        "GEN",
        "RUNNING/REPLICAS",
        "HEALTHY",
        "STATE",
    ]);
    for s in list {
        t.row(vec![
            s.spec.name.clone(),
            format!("{}@{}", s.spec.image, short_digest(&s.digest)),
            s.generation.to_string(),
            format!("{}/{}", s.running, s.spec.replicas),
            s.healthy.to_string(),
            service_state(s),
        ]);
    }
    t.render()
}

/// What a service is doing, in words.
fn service_state(s: &ServiceInfo) -> String {
    let mut states = Vec::new();
    if let Some(from) = s.rolling_out_from {
        states.push(format!("rolling out from gen {from}"));
    }
    if s.crash_looping {
        states.push("crash looping".to_owned());
    }
    if let Some(snapshot) = &s.snapshot {
        states.push(
            match snapshot.state {
                SnapshotState::Ready => "starts from a snapshot",
                SnapshotState::Taking => "taking a snapshot",
                SnapshotState::None => "no snapshot yet",
                SnapshotState::GivenUp => "snapshots given up",
            }
            .to_owned(),
        );
    }
    if states.is_empty() {
        "ok".to_owned()
    } else {
        states.join(", ")
    }
}

/// `herd ps`.
pub fn instances(list: &[InstanceInfo]) -> String {
    let mut t = Table::new(&[
        "ID", "SERVICE", "GEN", "STATUS", "ADDRESS", "UPTIME", "BOOT(ms)", "START",
    ]);
    for i in list {
        t.row(vec![
            i.id.clone(),
            i.service.clone(),
            i.generation.to_string(),
            instance_status(i),
            i.address.clone().unwrap_or_else(|| "-".into()),
            duration(i.uptime_ms),
            i.boot_time_ms
                .map_or_else(|| "-".into(), |ms| ms.to_string()),
            crate::agent::snapshot::start_name(i.start).to_owned(),
        ]);
    }
    t.render()
}

/// The status, and for an ended instance why (`exited(unhealthy)`).
fn instance_status(i: &InstanceInfo) -> String {
    let status = serde_json::to_value(i.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{:?}", i.status));
    match (&i.end, i.status) {
        (Some(end), InstanceStatus::Exited) => {
            let reason = serde_json::to_value(end.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match end.exit_code {
                Some(code) => format!("{status}({reason},{code})"),
                None => format!("{status}({reason})"),
            }
        }
        _ => status,
    }
}

/// One event as `herd events` prints it: time (UTC), sequence number, type, service,
/// instance (`-` for service events), then the details as `key=value`.
pub fn event_line(e: &Event) -> String {
    let mut details = Vec::new();
    let mut kind = String::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&e.kind) {
        for (key, value) in map {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            if key == "type" {
                kind = text;
            } else {
                details.push(format!("{key}={text}"));
            }
        }
    }
    let mut line = format!(
        "{}  {}  {kind}  {}  {}",
        utc(e.time_ms),
        e.seq,
        e.service,
        e.instance.as_deref().unwrap_or("-")
    );
    for d in details {
        line.push_str("  ");
        line.push_str(&d);
    }
    line.push('\n');
    line
}

/// Unix ms as `2024-05-06T07:08:09.123Z`.
pub fn utc(ms: u64) -> String {
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (h, m, s, milli) = (
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000,
    );
    // The proleptic Gregorian date of a day number, in 400-year eras of 146097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
}

/// The digest's first 12 hex digits, as `docker images` shows them.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.get(..12).unwrap_or(hex)
}

/// A duration in the two largest units: `850ms`, `42s`, `3m07s`, `5h02m`, `2d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide-cell".into(), "x".into()]);
        t.row(vec!["é".into()]);
        assert_eq!(
            t.render(),
            "A          LONGER\nwide-cell  x\né          -\n"
        );
    }

    #[test]
    fn durations_use_two_units() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(187_000), "3m07s");
        assert_eq!(duration(5 * 3_600_000 + 120_000), "5h02m");
        assert_eq!(duration(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
    }

    #[test]
    fn unix_times_print_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(utc(4_102_444_800_001), "2100-01-01T00:00:00.001Z");
    }

    #[test]
    fn an_event_prints_as_one_line_with_its_details() {
        let e = Event {
            seq: 7,
            time_ms: 0,
            service: "web".into(),
            instance: Some("web-1".into()),
            kind: crate::agent::types::EventKind::InstanceExited {
                reason: crate::fleet::EndReason::Exited,
                exit_code: None,
            },
        };
        assert_eq!(
            event_line(&e),
            "1970-01-01T00:00:00.000Z  7  instance_exited  web  web-1  exit_code=-  reason=exited\n"
        );
    }

    #[test]
    fn digests_are_shortened_to_twelve_digits() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
    }
}
