//! The status page: server-rendered HTML, no scripts, no build step,
//! refreshed by the browser every few seconds.

use std::fmt::Write;

use runfleet_core::model::Millis;
use runfleet_engine::ports::TimelineEvent;

use crate::view::View;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "42s", "3m05s", "2h01m".
pub fn age(now: Millis, then: Millis) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;background:#fff}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}\
table{border-collapse:collapse;min-width:40%}th,td{text-align:left;padding:4px 10px;border-bottom:1px solid #d0d7de}\
th{background:#f6f8fa}.bar{display:inline-block;height:10px;background:#2da44e;vertical-align:middle}\
.barbg{display:inline-block;width:120px;height:10px;background:#eaeef2;vertical-align:middle}\
.bad{color:#cf222e}.ok{color:#1a7f37}.muted{color:#57606a}.state{font-family:monospace}";

pub fn render(v: &View, timeline: &[TimelineEvent], now: Millis) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta http-equiv=refresh content=5><title>runfleet: {fleet}</title>\
         <style>{STYLE}</style></head><body><h1>runfleet <span class=muted>fleet {fleet}</span></h1>",
        fleet = esc(&v.fleet)
    );
    let health = &v.health;
    let dep = |name: &str, reached: bool, err: &Option<String>| match (reached, err) {
        (_, Some(e)) => format!("<span class=bad>{name}: {}</span>", esc(e)),
        (true, None) => format!("<span class=ok>{name}: ok</span>"),
        (false, None) => format!("<span class=muted>{name}: not reached yet</span>"),
    };
    let _ = write!(
        h,
        "<p id=health>{} · {} · {}</p>",
        dep("GitHub", health.github_reached, &health.github_error),
        dep("AWS", health.cloud_reached, &health.cloud_error),
        dep("store", health.store_reached, &health.store_error)
    );

    h.push_str("<h2>Pools</h2><table id=pools><tr><th>pool</th><th>capacity</th><th>queued</th>");
    for s in crate::view::INSTANCE_STATES {
        if s == "warm" {
            // Waiting warm instances next to the target they are kept at now.
            h.push_str("<th>warm/target</th>");
        } else {
            let _ = write!(h, "<th>{s}</th>");
        }
    }
    h.push_str("</tr>");
    for p in &v.pools {
        let used = p.used();
        let width = if p.max_runners == 0 {
            0
        } else {
            (used * 120 / p.max_runners as usize).min(120)
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td><span class=barbg><span class=bar style=\"width:{width}px\"></span></span> {used}/{}</td><td>{}</td>",
            esc(&p.name),
            p.max_runners,
            p.queued
        );
        for s in crate::view::INSTANCE_STATES {
            let n = p.instances.get(s).copied().unwrap_or(0);
            if s == "warm" {
                let _ = write!(h, "<td class=warm>{n}/{}</td>", p.warm_target);
            } else {
                let _ = write!(h, "<td>{n}</td>");
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");

    let _ = write!(h, "<h2>Queued jobs ({})</h2>", v.queued.len());
    if v.queued.is_empty() {
        h.push_str("<p class=muted id=queued>No job is waiting for a runner.</p>");
    } else {
        h.push_str("<table id=queued><tr><th>job</th><th>repository</th><th>labels</th><th>pool</th><th>waiting</th><th>launches</th></tr>");
        for q in v.queued.iter().take(200) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                q.job_id,
                esc(&q.repo),
                esc(&q.labels.join(", ")),
                esc(q.pool.as_deref().unwrap_or("none")),
                age(now, q.queued_at),
                q.launches
            );
        }
        h.push_str("</table>");
    }

    let _ = write!(h, "<h2>Instances ({})</h2>", v.instances.len());
    if v.instances.is_empty() {
        h.push_str("<p class=muted id=instances>No instance is running.</p>");
    } else {
        h.push_str("<table id=instances><tr><th>instance</th><th>pool</th><th>state</th><th>EC2</th><th>age</th><th>runner</th></tr>");
        for i in v.instances.iter().take(500) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=state>{}</td><td class=state>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&i.id),
                esc(&i.pool),
                esc(&i.state),
                esc(&i.cloud_state),
                age(now, i.launched_at),
                esc(&i.runner_name)
            );
        }
        h.push_str("</table>");
    }

    let _ = write!(h, "<h2>Recent failures ({})</h2>", v.failures.len());
    if v.failures.is_empty() {
        h.push_str("<p class=muted id=failures>None.</p>");
    } else {
        h.push_str(
            "<table id=failures><tr><th>job</th><th>where</th><th>what</th><th>reason</th></tr>",
        );
        for f in &v.failures {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=bad>{}</td><td>{}</td></tr>",
                f.job_id,
                esc(&f.repo),
                esc(&f.state),
                esc(&f.reason)
            );
        }
        h.push_str("</table>");
    }

    h.push_str("<h2>Timeline</h2>");
    if timeline.is_empty() {
        h.push_str("<p class=muted id=timeline>Nothing has happened yet.</p>");
    } else {
        h.push_str(
            "<table id=timeline><tr><th>ago</th><th>job</th><th>instance</th><th>event</th></tr>",
        );
        for t in timeline.iter().rev() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                age(now, t.at),
                t.job_id.map(|j| j.to_string()).unwrap_or_default(),
                esc(t.instance_id.as_deref().unwrap_or("")),
                esc(&t.what)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(61_000, 0), "1m01s");
        assert_eq!(age(5_000, 0), "5s");
        assert_eq!(age(3_660_000, 0), "1h01m");
        assert_eq!(age(0, 5_000), "0s");
    }

    #[test]
    fn a_pool_shows_its_waiting_warm_instances_next_to_its_warm_target() {
        let mut pool = crate::view::PoolView {
            name: "linux-x64".into(),
            max_runners: 10,
            warm_target: 3,
            ..Default::default()
        };
        pool.instances.insert("warm".into(), 2);
        pool.instances.insert("busy".into(), 4);
        let v = View {
            fleet: "f".into(),
            pools: vec![pool],
            ..View::default()
        };
        let html = render(&v, &[], 0);
        assert!(html.contains("<th>warm/target</th>"), "{html}");
        assert!(html.contains("<td class=warm>2/3</td>"), "{html}");
        // The warm instances count against max_runners like the others.
        assert!(html.contains("6/10"), "{html}");
    }

    #[test]
    fn a_job_label_cannot_inject_markup() {
        let mut v = View {
            fleet: "f".into(),
            ..View::default()
        };
        v.queued.push(crate::view::QueuedView {
            job_id: 1,
            run_id: 1,
            repo: "o/r".into(),
            labels: vec!["<script>alert(1)</script>".into()],
            pool: None,
            queued_at: 0,
            launches: 0,
        });
        let html = render(&v, &[], 0);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
    }
}
