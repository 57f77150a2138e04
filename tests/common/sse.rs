//! Server-Sent Events as the server writes them, read back for tests.

use serde_json::Value;

/// One Server-Sent Event: its name and its data as JSON.
#[derive(Debug)]
pub struct Sse {
    pub event: String,
    pub data: Value,
}

/// Parses a whole `text/event-stream` body (keep-alive comments skipped).
pub fn parse_events(body: &str) -> Vec<Sse> {
    body.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .filter_map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = Some(e.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            let event = event?;
            let data = serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("event {event}: data is not JSON ({e}): {data}"));
            Some(Sse { event, data })
        })
        .collect()
}
