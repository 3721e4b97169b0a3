//! `gateway check`: validate and summarise a configuration.

use std::path::Path;

use config::units::format_duration;
use config::SinkKind;

use crate::Failure;

pub fn run(path: &Path, plan: bool) -> Result<(), Failure> {
    let c = crate::load_config(path)?;
    let g = &c.gateway;
    let tags: usize = c.devices.iter().map(|d| d.tags.len()).sum();
    println!("configuration OK: {}", path.display());
    println!("gateway_id   {}", g.gateway_id);
    println!("data_dir     {}", g.data_dir.display());
    println!(
        "wal          sync={} max_age={} max_bytes={}",
        g.wal.sync.as_str(),
        format_duration(g.wal.max_age),
        g.wal.max_bytes.map_or("none".to_string(), |b| b.to_string())
    );
    println!(
        "http         {} (api token: {})",
        g.http.listen,
        if g.http.token.is_some() { "yes" } else { "no" }
    );
    println!(
        "devices      {} ({} tags) from {}",
        c.devices.len(),
        tags,
        g.devices_dir.display()
    );
    for d in &c.devices {
        println!(
            "  {:<20} {:<19} {:<28} {:>3} tags  scan {:<6} {}{}",
            d.name,
            d.protocol.as_str(),
            d.endpoint,
            d.tags.len(),
            format_duration(d.scan_interval),
            d.location.as_deref().unwrap_or(""),
            if d.enabled { "" } else { "  (disabled)" }
        );
    }
    if plan {
        print_plans(&c.devices);
    }
    println!("sinks        {}", g.sinks.len());
    for (name, s) in &g.sinks {
        let what = match &s.kind {
            SinkKind::File(f) => f.path.display().to_string(),
            SinkKind::Influx(i) => format!("{} ({:?})", i.url, i.api),
            SinkKind::Postgres(p) => config::redact_url(&p.url),
            SinkKind::Webhook(w) => format!("{} (>= {})", w.url, w.min_level.as_str()),
            SinkKind::Mqtt(m) => format!("{} (qos {}, {:?})", m.url, m.qos.0, m.mode),
        };
        println!(
            "  {:<20} {:<10} {}{}",
            name,
            s.kind.type_name(),
            what,
            if s.enabled { "" } else { "  (disabled)" }
        );
    }
    println!("alert rules  {}", g.alert_rules.len());
    for r in &g.alert_rules {
        let threshold = match (r.effective_threshold(), r.threshold_low, r.threshold_high) {
            (Some(v), _, _) => v.to_string(),
            (None, Some(lo), Some(hi)) => format!("{lo}..{hi}"),
            _ => String::new(),
        };
        let subject = match &r.condition_expression {
            Some(x) => format!("{}: ({x})", r.device),
            None => format!("{}.{}", r.device, r.tag.as_deref().unwrap_or("*")),
        };
        println!(
            "  {:<20} {} {} {} {}",
            r.name,
            subject,
            r.effective_op().as_str(),
            threshold,
            r.level.as_str()
        );
    }
    Ok(())
}

/// `--plan`: the reads each Modbus device sends per poll.
fn print_plans(devices: &[config::DeviceConfig]) {
    for d in devices {
        let config::DriverOptions::Modbus(m) = &d.driver else {
            continue;
        };
        match drivers::modbus::plan::plan(d, m) {
            Err(e) => println!("  plan of {}: {e}", d.name),
            Ok(p) => {
                println!(
                    "  plan of {} (unit {}): {} requests for {} tags",
                    d.name,
                    m.unit_id,
                    p.requests(),
                    p.tags()
                );
                for g in &p.groups {
                    println!("    every {}:", format_duration(g.period));
                    for r in &g.requests {
                        let names: Vec<&str> = r
                            .tags
                            .iter()
                            .filter_map(|(i, _)| d.tags.get(*i).map(|t| t.name.as_str()))
                            .collect();
                        let shown = if names.len() > 6 {
                            format!("{}, … {} more", names[..5].join(", "), names.len() - 5)
                        } else {
                            names.join(", ")
                        };
                        println!("      {r}: {shown}");
                    }
                }
            }
        }
    }
}
