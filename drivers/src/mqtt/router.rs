//! From a received topic to the tags it feeds: each enabled tag's topic
//! template is expanded (`{device}`, `{tag}`) into a filter; filters
//! without wildcards are looked up in a map, the others are matched level
//! by level. One message may feed many tags (a JSON document with a
//! pointer per tag), and one tag may match many topics (wildcards).

use std::collections::HashMap;

use config::{DeviceConfig, DriverOptions, PayloadFormat, TagOptions, TimestampFormat};

/// How one tag reads a matching message.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index into the device's `tags`.
    pub tag: usize,
    pub format: PayloadFormat,
    /// JSON pointer; `None` = the whole payload.
    pub pointer: Option<String>,
    pub timestamp: Option<(String, TimestampFormat)>,
}

#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Vec<Route>>,
    wildcard: Vec<(String, Route)>,
    filters: Vec<String>,
}

impl Router {
    /// The routes of `device` (an MQTT device that passed validation).
    pub fn new(device: &DeviceConfig) -> Router {
        let mut r = Router::default();
        let DriverOptions::Mqtt(m) = &device.driver else {
            return r;
        };
        for (i, t) in device.tags.iter().enumerate() {
            if !t.enabled {
                continue;
            }
            let TagOptions::Mqtt(o) = &t.driver else {
                continue;
            };
            let Some(tpl) = o.topic.as_ref().or(m.topic.as_ref()) else {
                continue;
            };
            let filter = config::mqtt::expand_topic(tpl, &device.name, &t.name);
            let addr = t.address.trim();
            let format = o.format.unwrap_or(m.format);
            // A device-level timestamp pointer applies to its JSON tags.
            let ts_pointer = o.timestamp_pointer.clone().or_else(|| {
                (format == PayloadFormat::Json)
                    .then(|| m.timestamp_pointer.clone())
                    .flatten()
            });
            let route = Route {
                tag: i,
                format,
                pointer: (addr != "payload").then(|| addr.to_string()),
                timestamp: ts_pointer.map(|p| (p, o.timestamp_format.unwrap_or(m.timestamp_format))),
            };
            if !r.filters.contains(&filter) {
                r.filters.push(filter.clone());
            }
            if filter.contains(['+', '#']) {
                r.wildcard.push((filter, route));
            } else {
                r.exact.entry(filter).or_default().push(route);
            }
        }
        r
    }

    /// The distinct filters to subscribe to.
    pub fn filters(&self) -> &[String] {
        &self.filters
    }

    /// The routes a message on `topic` feeds, in tag order of the file.
    pub fn routes<'a>(&'a self, topic: &str) -> Vec<&'a Route> {
        let mut out: Vec<&Route> = self
            .exact
            .get(topic)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        for (f, r) in &self.wildcard {
            if matches(f, topic) {
                out.push(r);
            }
        }
        if !self.wildcard.is_empty() {
            out.sort_by_key(|r| r.tag);
        }
        out
    }
}

/// MQTT filter matching (`+` one level, `#` the rest, including none).
/// Topics starting with `$` are not matched by a leading wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matching() {
        assert!(matches("plant/+/line1/#", "plant/a/line1/x/y"));
        assert!(matches("plant/+/line1/#", "plant/a/line1"));
        assert!(!matches("plant/+/line1/#", "plant/a/line2/x"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/"));
        assert!(matches("#", "x/y"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("a/+/c", "a//c"));
    }
}
